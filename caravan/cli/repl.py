"""The interactive loop of ``caravan run``: ``>>> `` prompts, ``/`` commands, multi-line input, history.

Input history (readline) is kept in ``~/.caravan/history`` unless ``OLLAMA_NOHISTORY`` (or
``CARAVAN_NOHISTORY``) is set or ``/set nohistory`` is used; the chat history is the session's messages.
Ctrl-C at the prompt clears the line, during an answer it stops the answer; Ctrl-D or ``/bye`` leaves.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from caravan.cli import models
from caravan.cli.client import CLIError, ServerError
from caravan.cli.session import Session
from registry.modelfile import OPTION_TYPES, Command, ModelfileError, to_create_request

try:  # importing readline gives input() line editing and history
    import readline
except ImportError:  # pragma: no cover - not on every platform
    readline = None  # type: ignore[assignment]

PROMPT, CONTINUATION, QUOTES = ">>> ", "... ", '"""'

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""
HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""
HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""
HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit caravan (/bye)
"""


def say(text: str) -> None:
    print(text, flush=True)


def parse_parameter(name: str, values: list[str]) -> Any:
    """A ``/set parameter`` value typed as a Modelfile PARAMETER would be; ``ValueError`` when invalid."""
    if name not in OPTION_TYPES:
        raise ValueError(f"unknown parameter '{name}'")
    commands = [Command("from", "x")] + [Command("parameter", f"{name} {value}") for value in values]
    try:
        parsed = to_create_request(commands).get("parameters", {})
    except ModelfileError as exc:
        raise ValueError(str(exc)) from None
    if name not in parsed:
        raise ValueError(f"parameter '{name}' is deprecated")
    return parsed[name]


class History:
    """readline input history in a file, switchable at run time."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.enabled = path is not None and readline is not None
        if self.enabled and path is not None and path.exists():
            with contextlib.suppress(OSError):
                readline.read_history_file(path)
        self.switch(self.enabled)

    @classmethod
    def from_env(cls) -> History:
        off = os.environ.get("OLLAMA_NOHISTORY") or os.environ.get("CARAVAN_NOHISTORY")
        return cls(None if off else Path(os.path.expanduser("~/.caravan/history")))

    def switch(self, enabled: bool) -> None:
        self.enabled = enabled and readline is not None
        if readline is not None:
            readline.set_auto_history(self.enabled)

    def store(self) -> None:
        if self.enabled and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(self.path)


class Repl:
    """Reads lines, runs ``/`` commands, sends the rest as chat turns."""

    def __init__(self, session: Session, history: History | None = None) -> None:
        self.session = session
        self.history = history or History(None)
        self.buffer: list[str] = []
        self.pending: str | None = None  # "prompt" or "system" while inside a \"\"\" block
        self.done = False
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "/bye": self.cmd_bye, "/exit": self.cmd_bye, "/set": self.cmd_set, "/show": self.cmd_show,
            "/load": self.cmd_load, "/save": self.cmd_save, "/clear": self.cmd_clear, "/list": self.cmd_list,
            "/?": self.cmd_help, "/help": self.cmd_help,
        }

    def run(self) -> None:
        """Until ``/bye`` or Ctrl-D."""
        try:
            while not self.done:
                self.step()
        finally:
            self.history.store()

    def step(self) -> None:
        """Read and handle one line; Ctrl-C clears, Ctrl-D ends."""
        try:
            line = input(CONTINUATION if self.pending else PROMPT)
        except EOFError:
            print()
            self.done = True
            return
        except KeyboardInterrupt:
            if not self.pending:
                say("\nUse Ctrl + d or /bye to exit.")
            self.buffer, self.pending = [], None
            return
        try:
            self.handle(line)
        except KeyboardInterrupt:  # Ctrl-C during a /command's request: back to the prompt
            print()

    def handle(self, line: str) -> None:
        if self.pending:
            return self.continue_block(line)
        if line.startswith(QUOTES):
            return self.open_block(line[len(QUOTES):], "prompt")
        word = line.split(maxsplit=1)[0] if line.strip() else ""
        if word.startswith("/"):
            return self.command(word, line.split()[1:])
        if line.strip():
            self.send(line)

    def command(self, word: str, args: list[str]) -> None:
        handler = self.commands.get(word)
        if handler is None:
            say(f"Unknown command '{word}'. Type /? for help")
        else:
            handler(args)

    # -- multi-line blocks ------------------------------------------------------------------------------

    def open_block(self, rest: str, kind: str) -> None:
        """Text after an opening \"\"\": complete when it also ends with one, else read more lines."""
        if rest.endswith(QUOTES):
            return self.close_block([rest[: -len(QUOTES)]], kind)
        self.buffer, self.pending = [rest], kind

    def continue_block(self, line: str) -> None:
        if not line.endswith(QUOTES):
            self.buffer.append(line)
            return
        lines, kind = [*self.buffer, line[: -len(QUOTES)]], self.pending or "prompt"
        self.buffer, self.pending = [], None
        self.close_block(lines, kind)

    def close_block(self, lines: list[str], kind: str) -> None:
        text = "\n".join(lines)
        if kind == "system":
            self.set_system(text)
        elif text.strip():
            self.send(text)

    # -- turns --------------------------------------------------------------------------------------------

    def send(self, prompt: str) -> None:
        """One chat turn; a server error is reported and the loop goes on."""
        try:
            self.session.chat(prompt)
        except CLIError as exc:
            print(f"Error: {exc.message}", file=sys.stderr, flush=True)

    def cmd_bye(self, _: list[str]) -> None:
        self.done = True

    def cmd_clear(self, _: list[str]) -> None:
        system = self.session.system
        self.session.messages = [{"role": "system", "content": system}] if system else []
        say("Cleared session context")

    def cmd_list(self, args: list[str]) -> None:
        with contextlib.suppress(typer.Exit):
            models.list_models(args[0] if args else None, False)

    def cmd_help(self, args: list[str]) -> None:
        topic = args[0].lstrip("/") if args else ""
        text = {"set": HELP_SET, "show": HELP_SHOW, "shortcut": HELP_SHORTCUTS, "shortcuts": HELP_SHORTCUTS}
        print(text.get(topic, HELP), file=sys.stderr, flush=True)

    # -- /set ---------------------------------------------------------------------------------------------

    def cmd_set(self, args: list[str]) -> None:
        if not args:
            return self.cmd_help(["set"])
        simple = {"verbose": ("verbose", True), "quiet": ("verbose", False), "wordwrap": ("wordwrap", True),
                  "nowordwrap": ("wordwrap", False), "noformat": ("format", "")}
        if args[0] in simple:
            attribute, value = simple[args[0]]
            setattr(self.session, attribute, value)
            return say("Disabled format." if args[0] == "noformat" else f"Set '{args[0]}' mode.")
        handler = {"parameter": self.set_parameter, "system": self.set_system_args, "format": self.set_format,
                   "think": self.set_think, "nothink": self.set_think, "history": self.set_history,
                   "nohistory": self.set_history}.get(args[0])
        if handler is None:
            return say(f"Unknown command '/set {args[0]}'. Type /? for help")
        handler(args)

    def set_parameter(self, args: list[str]) -> None:
        if len(args) < 3:
            return print(HELP_PARAMETERS, file=sys.stderr, flush=True)
        name, values = args[1], args[2:]
        try:
            self.session.options[name] = parse_parameter(name, values)
        except ValueError as exc:
            return say(f'Couldn\'t set parameter: "{exc}"')
        say(f"Set parameter '{name}' to '{', '.join(values)}'")

    def set_system_args(self, args: list[str]) -> None:
        if len(args) < 2:
            return self.cmd_help(["set"])
        text = " ".join(args[1:])
        if text.startswith(QUOTES):
            return self.open_block(text[len(QUOTES):], "system")
        self.set_system(text)

    def set_system(self, text: str) -> None:
        """Replace the system message (a trailing system message is replaced, else one is added)."""
        self.session.system = text
        message = {"role": "system", "content": text}
        messages = self.session.messages
        if messages and messages[-1]["role"] == "system":
            messages[-1] = message
        else:
            messages.append(message)
        say("Set system message.")

    def set_format(self, args: list[str]) -> None:
        if len(args) < 2 or args[1] != "json":
            return say("Invalid or missing format. For 'json' mode use '/set format json'")
        self.session.format = "json"
        say("Set format to 'json' mode.")

    def set_think(self, args: list[str]) -> None:
        if args[0] == "nothink":
            self.session.think = False
            return say("Set 'nothink' mode.")
        self.session.think = args[1] if len(args) > 1 else True
        say(f"Set 'think' mode to '{args[1]}'." if len(args) > 1 else "Set 'think' mode.")

    def set_history(self, args: list[str]) -> None:
        self.history.switch(args[0] == "history")
        say(f"Set '{args[0]}' mode.")

    # -- /show, /load, /save ------------------------------------------------------------------------------

    def cmd_show(self, args: list[str]) -> None:
        if not args:
            return self.cmd_help(["show"])
        body = {"model": self.session.model, "system": self.session.system, "options": self.session.options}
        try:
            info = self.session.client.call("POST", "/api/show", body)
        except CLIError as exc:
            return say(f"error: couldn't get model: {exc.message}")
        shower = {"info": self.show_info, "license": self.show_license, "modelfile": self.show_modelfile,
                  "parameters": self.show_parameters, "system": self.show_system,
                  "template": self.show_template}.get(args[0])
        if shower is None:
            return say(f"Unknown command '/show {args[0]}'. Type /? for help")
        shower(info)

    def show_info(self, info: dict[str, Any]) -> None:
        say(models.render_show(info))

    def show_license(self, info: dict[str, Any]) -> None:
        say(info.get("license") or "No license was specified for this model.")

    def show_modelfile(self, info: dict[str, Any]) -> None:
        say(str(info.get("modelfile") or ""))

    def show_parameters(self, info: dict[str, Any]) -> None:
        say("Model defined parameters:")
        lines = str(info.get("parameters") or "").splitlines()
        say("\n".join(f"  {line}" for line in lines) or "  No additional parameters were specified for this model.")
        if self.session.options:
            say("\nUser defined parameters:")
            say("\n".join(f"  {key:<30} {value}" for key, value in self.session.options.items()))
        say("")

    def show_system(self, info: dict[str, Any]) -> None:
        text = self.session.system or info.get("system")
        say(f"{text}\n" if text else "No system message was specified for this model.")

    def show_template(self, info: dict[str, Any]) -> None:
        say(info.get("template") or "No prompt template was specified for this model.")

    def cmd_load(self, args: list[str]) -> None:
        if len(args) != 1:
            return say("Usage:\n  /load <modelname>")
        previous = self.session.model
        self.session.model = args[0]
        say(f"Loading model '{args[0]}'")
        try:
            self.session.load()
        except CLIError as exc:
            self.session.model = previous
            missing = isinstance(exc, ServerError) and exc.status == 404
            return say(f"Couldn't find model '{args[0]}'" if missing else f"error: {exc.message}")
        self.session.messages = [{"role": "system", "content": self.session.system}] if self.session.system else []

    def cmd_save(self, args: list[str]) -> None:
        if len(args) != 1:
            return say("Usage:\n  /save <modelname>")
        try:
            self.session.client.call("POST", "/api/create", self.create_request(args[0]))
        except CLIError as exc:
            return say(f"error: {exc.message}")
        say(f"Created new model '{args[0]}'")

    def create_request(self, name: str) -> dict[str, Any]:
        """``/save``: the current model plus this session's system message, parameters and messages."""
        request: dict[str, Any] = {"model": name, "from": self.session.model, "stream": False}
        if self.session.system:
            request["system"] = self.session.system
        if self.session.options:
            request["parameters"] = self.session.options
        turns = [m for m in self.session.messages if m["role"] != "system"]
        if turns:
            request["messages"] = turns
        return request
