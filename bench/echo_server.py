"""A minimal HTTP server for the client floor: answers every request with two NDJSON lines, after DELAY ms.

This server does no work at all (raw asyncio on uvloop, no framework), so the time its first line takes to
reach a benchmark's client, less DELAY, is what that client and loopback HTTP cost any server, Caravan,
llama-server or Ollama alike. DELAY stands for a prefill: on an idle VM a process that slept is slow to wake,
so a client that waited as long as a real first token takes pays more than one answered at once.

    .venv/bin/python -m bench.echo_server PORT [DELAY_MS]
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

BODY = b'{"response":"x","done":false}\n', b'{"response":"","done":true,"eval_count":1}\n'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if delay:
                await asyncio.sleep(delay)
            writer.write(HEAD + chunk(BODY[0]))
            await writer.drain()
            writer.write(chunk(BODY[1]) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(port: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0))
