"""Time to first token of a chat's second turn after a ~1,000-token history, vs its first turn.

One batch-engine worker (parallel 4). Turn 1 sends the history (a user message of ~1,000 tokens) and its
prompt is evaluated in full; turn 2 sends history + the reply + a short question, so with prefix reuse only
the new tokens are evaluated. Both TTFTs are client-side over streaming ``/api/chat``; conversations are
distinct so no turn 1 finds another's prefix.

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


def run(conversations: int = 6, threads: int = NCPU, num_ctx: int = 4096) -> list[Row]:
    firsts, seconds, sizes = [], [], []
    with caravan(parallel=4, threads=threads, num_ctx=num_ctx) as cluster, httpx.Client() as client:
        chat(client, cluster.gateway_url, [{"role": "user", "content": "Hi"}])  # warm the connection
        for index in range(conversations):
            messages = history(index)
            first, reply, size = chat(client, cluster.gateway_url, messages)
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Which fact is first?"}]
            second, _, _ = chat(client, cluster.gateway_url, messages)
            firsts.append(first * 1000)
            seconds.append(second * 1000)
            sizes.append(size)
    ratio = median([b / a for a, b in zip(firsts, seconds, strict=True)])
    return [Row("second turn", f"TTFT ms, turn 2 vs turn 1 (history {int(median(sizes))} tokens)",
                median(seconds), median(firsts), "Caravan, turn 1", ratio, "≤ 0.20×", ratio <= 0.20)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--threads", type=int, default=NCPU)
    args = parser.parse_args()
    print(table(run(args.conversations, args.threads)))


if __name__ == "__main__":
    main()
