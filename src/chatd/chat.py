"""`chatd chat`: talk from a terminal, on top of `chatd.client`.

Lines you type are sent to the current conversation; lines starting with `/` are
commands (`/help` lists them). Incoming messages print as they arrive and are
acknowledged, so the next session resumes after them. Command parsing and event
formatting are pure functions, tested without a terminal or a server.
"""

from __future__ import annotations

import getpass
import mimetypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chatd.client import ApiError, ChatClient, Credentials, LiveConnection
from chatd.e2e.client import E2EClient, KeyWarning, Undecryptable
from chatd.e2e.errors import E2EError
from chatd.e2e.machine import ENCRYPTED_TYPES, Decrypted
from chatd.e2e.media import upload_encrypted
from chatd.e2e.store import StateStore
from chatd.e2e.terminal import (
    LOCK,
    PASSPHRASE_ENV,
    as_message,
    describe_undecryptable,
    describe_warning,
    passphrase_from_environment_or_prompt,
    save_credentials,
    saved_credentials,
    state_dir_for,
)

HELP = """commands:
  /to HANDLE             open the 1:1 conversation with HANDLE and make it current
  /group NAME HANDLE...  create a group with those members and make it current
  /list                  your conversations (id, name, unread)
  /open ID               make conversation ID current
  /history [N]           the last N messages of the current conversation (default 20)
  /send-file PATH        upload the file at PATH and send it to the current conversation
  /reply N TEXT          answer message #N of the current conversation
  /react N EMOJI         react to message #N (/unreact N EMOJI takes it back)
  /edit N TEXT           replace the text of your message #N
  /forward N ID...       copy message #N into conversations ID... (up to 5)
  /pin N, /unpin N       pin or unpin message #N
  /verify HANDLE         the safety number to compare with HANDLE in person
                         (/verify HANDLE ok once it matched); 🔒 marks encrypted chats
  /help                  this text
  /quit                  leave
anything else is sent to the current conversation; @handle mentions a member (Tab
completes the handles of the current conversation's members, on a terminal)"""

#: Commands of the form `/name N ...`: a message's seq and what the command needs after it
#: (the usage line names it; "" for nothing).
_ON_MESSAGE = {"reply": "TEXT", "react": "EMOJI", "unreact": "EMOJI", "edit": "TEXT",
               "forward": "ID...", "pin": "", "unpin": ""}


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()


def parse_line(line: str) -> Command:
    """`/to bob` -> Command("to", ("bob",)); plain text -> Command("say", (text,))."""
    text = line.strip()
    if not text.startswith("/"):
        return Command("say", (text,)) if text else Command("noop")
    if text.split(maxsplit=1)[0] == "/send-file":
        # The rest of the line is the path, spaces and all.
        path = text[len("/send-file"):].strip()
        return Command("send-file", (path,)) if path else Command(
            "error", ("usage: /send-file PATH",))
    name, *args = text[1:].split()
    if name in _ON_MESSAGE:
        return _message_command(name, text)
    if name in ("to", "open") and len(args) != 1:
        return Command("error", (f"usage: /{name} {'HANDLE' if name == 'to' else 'ID'}",))
    if name == "group" and len(args) < 2:
        return Command("error", ("usage: /group NAME HANDLE...",))
    if name == "history" and args and not args[0].isdigit():
        return Command("error", ("usage: /history [N]",))
    if name == "verify" and (len(args) not in (1, 2) or args[1:] not in ([], ["ok"])):
        return Command("error", ("usage: /verify HANDLE [ok]",))
    if name not in ("to", "open", "group", "list", "history", "help", "quit", "verify"):
        return Command("error", (f"unknown command /{name}; try /help",))
    return Command(name, tuple(args))


def _message_command(name: str, text: str) -> Command:
    """`/reply 5 some text` -> Command("reply", ("5", "some text")): the seq, then the
    rest of the line as typed (a reply or an edit keeps its spaces)."""
    wants = _ON_MESSAGE[name]
    usage = Command("error", (f"usage: /{name} N{' ' + wants if wants else ''}",))
    parts = text.split(maxsplit=2)
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        return usage
    rest = parts[2].strip() if len(parts) > 2 else ""
    if bool(rest) != bool(wants):
        return usage
    if name == "forward":
        return Command(name, (parts[1], *rest.split()))
    return Command(name, (parts[1], rest) if wants else (parts[1],))


def complete_mention(line: str, handles: list[str]) -> list[str]:
    """Tab completion of `@handle`: the known handles that complete the line's last word,
    when it starts with '@' (each as the whole word, '@' included)."""
    word = line.rsplit(maxsplit=1)[-1] if line and not line[-1].isspace() else ""
    if not word.startswith("@"):
        return []
    typed = word[1:].lower()
    return sorted(f"@{handle}" for handle in set(handles) if handle.startswith(typed))


@dataclass
class Names:
    """Display names the terminal knows: users and conversations."""

    users: dict[str, str] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)

    def user(self, user_id: str) -> str:
        return self.users.get(user_id, user_id)

    def conversation(self, conversation_id: str) -> str:
        return self.conversations.get(conversation_id, conversation_id)


#: Log entries of reactions, edits and pins (issue 18): how each reads, from its body
#: ({"target": seq, ...}).
_ABOUT_MESSAGES = {"chatd/reaction": "reacted", "chatd/edit": "edited",
                   "chatd/pin": "pinned"}


def format_message(message: dict[str, Any], names: Names, me: str = "") -> str:
    """One message as the terminal shows it: `[where] #seq who: text`, whether it was
    forwarded or edited, and below it what it replies to, its attachments and reactions.
    Mentions are in the text as typed (`@handle`); one of `me` is marked."""
    where = names.conversation(message["conversation_id"])
    who = names.user(message["sender_id"])
    head = f"[{where}] #{message['seq']}"
    content_type = message["content_type"]
    body = message["body"]
    if content_type == "chatd/system":
        return f"{head} * {who}: {body.get('event', '?')} {' '.join(body.get('user_ids', []))}"
    if content_type in _ABOUT_MESSAGES and isinstance(body, dict):
        return f"{head} * {who} {_about_message(content_type, body)}"
    if content_type == "chatd/deleted":
        return f"{head} {who}: (deleted)"
    text = body if content_type.startswith("text/") \
        else f"<{content_type}, {len(body)} bytes>"
    if message.get("forwarded"):
        text = ("(forwarded many times) " if message.get("forwarded_many")
                else "(forwarded) ") + text
    if message.get("edited_at"):
        text += " (edited)"
    if me and me in message.get("mentions", ()):
        text += "  ← mentions you"
    line = f"{head} {who}: {text}"
    if message.get("reply_to"):
        line += "\n    ↳ " + format_quote(message["reply_to"], message.get("quote"), names)
    for attachment in message.get("attachments", ()):
        line += "\n    " + format_attachment(attachment)
    if message.get("reactions"):
        line += "\n    " + format_reactions(message["reactions"])
    return line


def _about_message(content_type: str, body: dict[str, Any]) -> str:
    target = f"#{body.get('target', '?')}"
    if content_type == "chatd/reaction":
        emoji = body.get("emoji") or ""
        return f"reacted {emoji} to {target}" if emoji else f"took back a reaction to {target}"
    if content_type == "chatd/edit":
        return f"edited {target}: {body.get('body', '')}"
    return f"{'unpinned' if body.get('pinned') is False else 'pinned'} {target}"


def format_quote(seq: int, quote: dict[str, Any] | None, names: Names) -> str:
    """`replying to #3 alice: "the start of it"`."""
    if quote is None:
        return f"replying to #{seq}"
    who = names.user(quote["sender_id"])
    if quote.get("deleted"):
        return f"replying to #{seq} {who}: (deleted)"
    if "text" in quote:
        return f'replying to #{seq} {who}: "{quote["text"]}"'
    return f"replying to #{seq} {who}: <{quote['content_type']}>"


def format_reactions(reactions: dict[str, Any]) -> str:
    """`👍 2 (you)  ❤️ 1`."""
    return "  ".join(f"{emoji} {summary.get('count', 0)}" + (" (you)" if summary.get("me")
                                                              else "")
                     for emoji, summary in reactions.items())


def format_attachment(attachment: dict[str, Any]) -> str:
    """`📎 photo.jpg (image, 8.2 KB, 800x600) media 2531…`."""
    size = attachment["size"]
    shown = f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB" if size < 1 << 20 \
        else f"{size / (1 << 20):.1f} MB"
    details = [attachment["kind"], shown]
    if attachment.get("width"):
        details.append(f"{attachment['width']}x{attachment['height']}")
    return f"📎 {attachment['filename']} ({', '.join(details)}) media {attachment['media_id']}"


def format_event(event: dict[str, Any], names: Names, me: str = "") -> str | None:
    kind = event.get("type")
    if kind == "message":
        return format_message(event["message"], names, me)
    if kind == "typing":
        return f"[{names.conversation(event['conversation_id'])}] " \
               f"{names.user(event['user_id'])} is typing…"
    if kind == "presence":
        state = "online" if event["online"] else "offline"
        return f"* {names.user(event['user_id'])} is {state}"
    if kind == "error":
        return f"! {event['code']}: {event['message']}"
    return None


class Terminal:
    def __init__(self, client: ChatClient, live: LiveConnection, out: Any) -> None:
        self.client = client
        self.live = live
        self.out = out
        self.names = Names()
        self.current: str | None = None
        #: The handles of the current conversation's members (for @ completion).
        self.member_handles: list[str] = []
        #: End-to-end encryption (None: off); the conversations known to be encrypted.
        self.e2e: E2EClient | None = None
        self.encrypted: set[str] = set()

    @property
    def me(self) -> str:
        return self.client.credentials.user_id if self.client.credentials else ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def learn_user(self, user_id: str) -> None:
        if user_id not in self.names.users:
            try:
                profile = await self.client.request("GET", f"/users/{user_id}")
                self.names.users[user_id] = profile["handle"]
            except ApiError:
                self.names.users[user_id] = user_id

    async def learn_conversation(self, conv: dict[str, Any]) -> None:
        name = conv["name"]
        if conv["kind"] == "direct":
            me = self.client.credentials.user_id if self.client.credentials else ""
            others = [m["user_id"] for m in conv["members"] if m["user_id"] != me] or [me]
            await self.learn_user(others[0])
            name = "@" + self.names.user(others[0])
        if conv.get("encrypted"):
            self.encrypted.add(conv["conversation_id"])
            name += f" {LOCK}"
        self.names.conversations[conv["conversation_id"]] = name

    async def receive(self) -> None:
        if self.e2e is not None:
            await self.receive_encrypted(self.e2e)
            return
        async for event in self.live.events():
            if event.get("type") == "message":
                message = event["message"]
                await self.learn_user(message["sender_id"])
                if message.get("quote"):
                    await self.learn_user(message["quote"]["sender_id"])
                if message["conversation_id"] not in self.names.conversations:
                    conv = await self.client.request(
                        "GET", f"/conversations/{message['conversation_id']}")
                    await self.learn_conversation(conv)
                await self.live.ack(message["conversation_id"], message["seq"])
            line = format_event(event, self.names, self.me)
            if line:
                self.say(line)
        self.say(f"* disconnected ({self.live.close_code}: {self.live.close_reason})")

    async def receive_encrypted(self, e2e: E2EClient) -> None:
        """`receive`, through the SDK: encrypted messages decrypted, key warnings shown."""
        async for item in e2e.events(self.live):
            if isinstance(item, KeyWarning):
                await self.learn_user(item.change.user_id)
                self.say(describe_warning(item, self.names.user(item.change.user_id)))
                continue
            if isinstance(item, Decrypted):
                event: dict[str, Any] = {"type": "message", "message": as_message(item)}
            elif isinstance(item, Undecryptable):
                if item.message.get("type") == "to_device":
                    continue
                event = {"type": "message", "message": describe_undecryptable(item)}
            else:
                event = item
            if event.get("type") == "message":
                message = event["message"]
                await self.learn_user(message["sender_id"])
                if message["conversation_id"] not in self.names.conversations:
                    conv = await self.client.request(
                        "GET", f"/conversations/{message['conversation_id']}")
                    await self.learn_conversation(conv)
                await self.live.ack(message["conversation_id"], message["seq"])
            line = format_event(event, self.names, self.me)
            if line:
                self.say(line)
        self.say(f"* disconnected ({self.live.close_code}: {self.live.close_reason})")

    async def verify(self, handle: str, confirmed: bool) -> None:
        if self.e2e is None:
            self.say("end-to-end encryption is off in this session")
            return
        peer = await self.client.find_user(handle)
        number = await self.e2e.safety_number(peer["user_id"])
        if confirmed:
            self.e2e.verify(peer["user_id"])
            self.say(f"* {handle} is verified {LOCK}")
            return
        state = "verified" if self.e2e.machine.trust.is_verified(peer["user_id"]) \
            else "not verified"
        self.say(f"* safety number with {handle} ({state}):\n    {number[:35]}\n"
                 f"    {number[36:]}\ncompare it with theirs in person; "
                 f"if it matches: /verify {handle} ok")

    async def send_text(self, conversation_id: str, text: str, reply_to: int = 0) -> None:
        """Send `text`, encrypted when the conversation is."""
        if self.e2e is not None and conversation_id in self.encrypted:
            content: dict[str, Any] = {"text": text}
            if reply_to:
                content["reply_to"] = reply_to
            await self.e2e.send(conversation_id, content, live=self.live)
        else:
            await self.live.send(conversation_id, text, reply_to=reply_to)

    async def run_command(self, command: Command) -> bool:
        """Run one command; False to quit."""
        if command.name == "quit":
            return False
        if command.name == "error":
            self.say(command.args[0])
        elif command.name == "help":
            self.say(HELP)
        elif command.name == "to":
            peer = await self.client.find_user(command.args[0])
            self.names.users[peer["user_id"]] = peer["handle"]
            try:
                conv = await self.client.open_direct(
                    peer["user_id"], encrypted=True if self.e2e is not None else None)
            except ApiError as exc:
                if exc.code != "encryption_mismatch":
                    raise
                conv = await self.client.open_direct(peer["user_id"])  # as it was made
            await self.open(conv)
        elif command.name == "group":
            members = [(await self.client.find_user(h))["user_id"] for h in command.args[1:]]
            await self.open(await self.client.create_group(
                command.args[0], members, encrypted=self.e2e is not None))
        elif command.name == "open":
            await self.open(await self.client.request("GET", f"/conversations/{command.args[0]}"))
        elif command.name == "list":
            for conv in await self.client.conversations():
                await self.learn_conversation(conv)
                conversation_id = conv["conversation_id"]
                self.say(f"{conversation_id}  {self.names.conversation(conversation_id)}"
                         f"  ({conv['unread']} unread)")
        elif command.name == "history":
            if self.current is None:
                self.say("no current conversation: /to HANDLE or /open ID first")
            else:
                count = int(command.args[0]) if command.args else 20
                page = await self.client.history(self.current, limit=min(max(count, 1), 200))
                for message in page["messages"]:
                    if self.e2e is not None and message["content_type"] in ENCRYPTED_TYPES:
                        # Megolm messages read again; an Olm one only once, live.
                        opened = await self.e2e.decrypt(message)
                        message = as_message(opened) if isinstance(opened, Decrypted) \
                            else describe_undecryptable(opened)
                    await self.learn_user(message["sender_id"])
                    if message.get("quote"):
                        await self.learn_user(message["quote"]["sender_id"])
                    self.say(format_message(message, self.names, self.me))
        elif command.name == "send-file":
            raw = command.args[0]
            if raw.startswith("~/"):  # (expanduser would do, but may read the passwd db)
                raw = os.environ.get("HOME", "~") + raw[1:]
            await self.send_file(Path(raw))
        elif command.name == "say":
            if self.current is None:
                self.say("no current conversation: /to HANDLE or /open ID first")
            else:
                await self.send_text(self.current, command.args[0])
        elif command.name == "verify":
            await self.verify(command.args[0], command.args[1:] == ("ok",))
        elif command.name in _ON_MESSAGE:
            if self.current is None:
                self.say("no current conversation: /to HANDLE or /open ID first")
            else:
                await self.on_message(command.name, self.current, int(command.args[0]),
                                      command.args[1:])
        return True

    async def on_message(self, name: str, conversation_id: str, seq: int,
                         args: tuple[str, ...]) -> None:
        """The commands about message #seq of the current conversation."""
        if name == "reply":
            await self.send_text(conversation_id, args[0], reply_to=seq)
        elif name == "react":
            await self.client.react(conversation_id, seq, args[0])
        elif name == "unreact":
            await self.client.unreact(conversation_id, seq, args[0])
        elif name == "edit" and conversation_id in self.encrypted:
            # An edit's text would reach the server as it is: not in an encrypted chat.
            self.say("! edits are not end-to-end encrypted yet: nothing was sent")
        elif name == "edit":
            await self.client.edit(conversation_id, seq, args[0])
        elif name == "forward":
            for result in await self.client.forward(conversation_id, seq, list(args)):
                where = self.names.conversation(result["conversation_id"])
                self.say(f"* forwarded to {where} as #{result['seq']}" if "seq" in result
                         else f"! {where}: {result['error']['code']}: "
                              f"{result['error']['message']}")
        elif name == "pin":
            await self.client.pin(conversation_id, seq)
        elif name == "unpin":
            await self.client.unpin(conversation_id, seq)

    async def send_file(self, path: Path) -> None:
        if self.current is None:
            self.say("no current conversation: /to HANDLE or /open ID first")
            return
        if not await trio.Path(path).is_file():
            self.say(f"! no such file: {path}")
            return
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if self.e2e is not None and self.current in self.encrypted:
            await self.send_encrypted_file(self.e2e, self.current, path, content_type)
            return
        try:
            media = await self.client.upload(path, content_type, filename=path.name)
        except ApiError as exc:
            self.say(f"! {exc.code}: {exc.message}")
            return
        await self.live.send(self.current, path.name, attachments=[media["media_id"]])
        self.say(f"* sent {path.name} ({media['size']} bytes)")

    async def send_encrypted_file(self, e2e: E2EClient, conversation_id: str, path: Path,
                                  content_type: str) -> None:
        """The file encrypted before it leaves (chatd.e2e.media), its key and name inside
        the encrypted message."""
        try:
            media = await upload_encrypted(self.client, path, content_type)
        except ApiError as exc:
            self.say(f"! {exc.code}: {exc.message}")
            return
        await e2e.send(conversation_id, {"text": path.name, "media": media.to_content()},
                       live=self.live, attachments=[media.attachment()])
        self.say(f"* sent {path.name} ({media.size} bytes, encrypted {LOCK})")

    async def open(self, conv: dict[str, Any]) -> None:
        await self.learn_conversation(conv)
        self.current = conv["conversation_id"]
        self.say(f"* now talking in {self.names.conversation(self.current)}")
        # Handles for @ completion: those of the first members (a profile read each).
        members = [member["user_id"] for member in conv.get("members", ())][:MAX_COMPLETED]
        for user_id in members:
            await self.learn_user(user_id)
        self.member_handles = [self.names.user(user_id) for user_id in members
                               if user_id != self.me]

    def completer(self, text: str, state: int) -> str | None:
        """For `readline`: the state-th completion of the word being typed."""
        import readline  # (only on a terminal; see read_lines)

        line = readline.get_line_buffer()[:readline.get_endidx()]
        options = complete_mention(line, self.member_handles)
        return options[state] if state < len(options) else None


#: The most members whose handles a conversation's @ completion knows.
MAX_COMPLETED = 200


def line_reader(terminal: Terminal) -> Any:
    """How lines are read: with `input()` and Tab completion of @handles on a terminal
    (where `readline` exists), else plain `readline()` (pipes, tests)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline
    try:
        import readline
    except ImportError:  # (not on every platform)
        return sys.stdin.readline
    readline.set_completer(terminal.completer)
    readline.set_completer_delims(" \t\n")
    readline.parse_and_bind("tab: complete")

    def read() -> str:
        try:
            return input() + "\n"
        except EOFError:
            return ""

    return read


async def run_chat(url: str, handle: str, password: str, register: bool,
                   e2e: bool = True) -> int:
    """`e2e`: encrypt (new conversations are end-to-end encrypted) when a passphrase for
    the keys is at hand ($CHATD_E2E_PASSPHRASE, or a prompt on a terminal)."""
    passphrase = passphrase_from_environment_or_prompt() if e2e else None
    async with ChatClient(url) as client:
        try:
            store = await open_state(url, handle, passphrase) if passphrase else None
            saved = saved_credentials(store) if store is not None else None
            if register and saved is None:
                try:
                    await client.register(handle, password, handle)
                except ApiError as exc:
                    if exc.code != "handle_taken":
                        raise
            if saved is not None and await _still_valid(client, saved):
                client.token, client.credentials = saved.token, saved
            else:
                credentials = await client.login(handle, password, device_name="chatd chat")
                if store is not None:
                    save_credentials(store, credentials)
            encryption = None
            if store is not None and passphrase and client.credentials is not None:
                encryption = await E2EClient.open(
                    client, store.root / f"device-{client.credentials.device_id}",
                    passphrase)
        except ApiError as exc:
            print(f"chatd chat: {exc.message}", file=sys.stderr)
            return 1
        except E2EError as exc:
            print(f"chatd chat: {exc}", file=sys.stderr)
            return 1
        async with client.connect() as live, trio.open_nursery() as nursery:
            terminal = Terminal(client, live, sys.stdout)
            terminal.e2e = encryption
            terminal.say(f"* logged in as {handle}; /help lists the commands")
            if encryption is not None:
                terminal.say(f"* end-to-end encryption on {LOCK}: new conversations are "
                             f"encrypted")
            elif e2e:
                terminal.say(f"* end-to-end encryption off: set ${PASSPHRASE_ENV} (or run "
                             f"on a terminal) for a passphrase")
            nursery.start_soon(terminal.receive)
            read_line = line_reader(terminal)
            while True:
                line = await trio.to_thread.run_sync(read_line, abandon_on_cancel=True)
                if not line:  # end of input
                    break
                try:
                    if not await terminal.run_command(parse_line(line)):
                        break
                except ApiError as exc:
                    terminal.say(f"! {exc.code}: {exc.message}")
                except E2EError as exc:
                    terminal.say(f"! encryption: {exc}")
            nursery.cancel_scope.cancel()
    return 0


async def open_state(url: str, handle: str, passphrase: str) -> StateStore:
    """The user's encrypted state for this server (its device token lives there; each
    device's keys in a directory of their own under it)."""
    root = state_dir_for(url, handle)
    return await trio.to_thread.run_sync(lambda: StateStore.open(root, passphrase))


async def _still_valid(client: ChatClient, credentials: Credentials) -> bool:
    """Whether a saved device token still works (not revoked, not expired)."""
    client.token = credentials.token
    try:
        await client.request("GET", "/me")
    except ApiError as exc:
        if exc.status != 401:
            raise
        client.token = None
        return False
    return True


def password_from_environment_or_prompt() -> str:
    return os.environ.get("CHATD_PASSWORD") or getpass.getpass("password: ")
