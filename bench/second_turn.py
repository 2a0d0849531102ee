"""Time to first token of a chat's second turn after a ~1,000-token history, vs its first turn.

One batch-engine worker (parallel 4). Turn 1 sends the history (a user message of ~1,000 tokens) and its
prompt is evaluated in full; turn 2 sends history + the reply + a short question, so with prefix reuse only
the new tokens are evaluated. Every conversation's turn 1 runs before any turn 2, so with more conversations
than slots the early ones have lost their slot by then: their histories come back from host RAM (parked
states, ``CARAVAN_SLOT_CACHE_MB``), measured with and without. Both TTFTs are client-side over streaming
``/api/chat``; conversations are distinct so no turn 1 finds another's prefix.

    .venv/bin/python -m bench.second_turn [--conversations 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from bench.common import MODEL, NCPU, Row, caravan, median, table

OPTIONS = {"temperature": 0, "num_predict": 16}


def history(index: int) -> list[dict[str, str]]:
    """A user message of roughly 1,000 tokens (checked by ``prompt_eval_count``)."""
    facts = " ".join(f"Fact {index}.{n}: the number {n * 7 + index} is written in blue ink." for n in range(52))
    return [{"role": "user", "content": f"Read these notes carefully. {facts}"}]


def chat(client: httpx.Client, gateway: str, messages: list[dict[str, str]]) -> tuple[float, str, int]:
    """(TTFT seconds, reply, prompt_eval_count) of one streamed chat turn."""
    start = time.perf_counter()
    first, parts, prompt = 0.0, [], 0
    body = {"model": MODEL, "messages": messages, "options": OPTIONS}
    with client.stream("POST", gateway + "/api/chat", json=body, timeout=600) as response:
        for line in response.iter_lines():
            chunk = json.loads(line)
            first = first or time.perf_counter()
            parts.append(chunk.get("message", {}).get("content", ""))
            prompt = int(chunk.get("prompt_eval_count", prompt))
    return first - start, "".join(parts), prompt


def turns(conversations: int, threads: int, num_ctx: int, cache_mb: int) -> tuple[list[float], list[float], int]:
    """Turn-1 and turn-2 TTFTs (ms) of ``conversations`` conversations, every turn 1 first; history size."""
    firsts, seconds, sizes, chats = [], [], [], []
    with caravan(parallel=4, threads=threads, num_ctx=num_ctx,
                 worker_env={"CARAVAN_SLOT_CACHE_MB": str(cache_mb)}) as cluster, httpx.Client() as client:
        chat(client, cluster.gateway_url, [{"role": "user", "content": "Hi"}])  # warm the connection
        for index in range(conversations):
            messages = history(index)
            first, reply, size = chat(client, cluster.gateway_url, messages)
            chats.append([*messages, {"role": "assistant", "content": reply},
                          {"role": "user", "content": "Which fact is first?"}])
            firsts.append(first * 1000)
            sizes.append(size)
        for messages in chats:
            seconds.append(chat(client, cluster.gateway_url, messages)[0] * 1000)
    return firsts, seconds, int(median(sizes))


def run(conversations: int = 6, threads: int = NCPU, num_ctx: int = 4096) -> list[Row]:
    rows = []
    for cache_mb in (256, 0):
        firsts, seconds, size = turns(conversations, threads, num_ctx, cache_mb)
        ratio = median([b / a for a, b in zip(firsts, seconds, strict=True)])
        label = "parked states on" if cache_mb else "no parked states (CARAVAN_SLOT_CACHE_MB=0)"
        rows.append(Row("second turn", f"TTFT ms, turn 2 vs turn 1 (history {size} tokens, {conversations} "
                        f"conversations, 4 slots; {label})", median(seconds), median(firsts), "Caravan, turn 1",
                        ratio, "≤ 0.20×" if cache_mb else "", ratio <= 0.20 if cache_mb else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.conversations, args.threads)))


if __name__ == "__main__":
    main()
