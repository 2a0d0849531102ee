"""Test models derived from the demo model: same weights, another Go TEMPLATE and/or params, written straight
into the test store (the registry reads manifests from disk on every resolve).

The demo GGUF's own chat template has no tools, thinking or fill-in-middle support, so these templates give
the small model those capabilities; constrained decoding (``format``) then makes its output predictable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caravan.names import ModelName
from registry.importer import text_layer
from registry.store import Manifest, Store

DEMO = "smollm2:135m"

# chatml + JSON tool calls without a tag (llama3.1 style: the tool-call tag is "{")
TOOLS_TEMPLATE = """{{- if .Tools }}<|im_start|>system
You may call a function. Reply with JSON: {"name": <function>, "arguments": <object>}.
{{ range .Tools }}- {{ .Function.Name }}: {{ .Function.Description }}
{{ end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
{{- else }}
{{ .Content }}
{{- end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>user
Result of {{ .ToolName }}: {{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""

# chatml whose generation prompt opens <think> when thinking is on (capability "thinking")
THINK_TEMPLATE = """{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if $.Think }}<think>
{{ end }}
{{- end }}{{- end }}"""

# fill-in-middle (capability "insert")
FIM_TEMPLATE = ("{{ if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
                "{{ else }}{{ .Prompt }}{{ end }}")


def derive(store_root: Path, name: str, *, template: str | None = None, params: dict[str, Any] | None = None) -> str:
    """Store ``name`` as the demo model with ``template`` and extra ``params``; returns the name."""
    store = Store(store_root)
    base = store.read_manifest(ModelName.parse(DEMO)).manifest
    layers = [layer for layer in base.layers if layer.kind not in ("template", "params")]
    base_params = base.layer("params")
    merged = json.loads(store.read_blob(base_params.digest)) if base_params else {}
    merged.update(params or {})
    if template is not None:
        layers.append(text_layer(store, "template", template.encode()))
    layers.append(text_layer(store, "params", json.dumps(merged).encode()))
    manifest = Manifest(config=base.config, layers=layers)
    store.write_manifest(ModelName.parse(name), manifest.to_bytes())
    return name
