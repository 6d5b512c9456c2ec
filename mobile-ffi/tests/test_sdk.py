#!/usr/bin/env python3
"""The mobile SDK, driven from its generated Python bindings against real
processes: a `tandem-relay` and a desktop agent (`tandem pair`, `tandem run`)
with a `jsonl` fixture executor (fixtures/executor.py).

Run by mobile-ffi/tests/run.sh (which builds the binaries and the library
and generates the bindings); by hand:

    mobile-ffi/tests/test_sdk.py --bin-dir target/debug --bindings OUT

where OUT is what `mobile-ffi/scripts/bindings.sh OUT --lib …` wrote.

The checks run in order against one relay and one desktop (later ones use
the phones paired earlier); a failed check is reported and the rest still
run. The last line is `mobile SDK: N passed, M failed`. The session renewal
check has a relay, a desktop and a phone of its own, with a recording tap
and the probe of the `tandem-e2e` tool (Python cannot decrypt).
"""

import argparse
import asyncio
import base64
import gc
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "executor.py")
DESKTOP_NAME = "Build Box"
IDLE_DETACH_SECS = 20
WAIT = 30.0

tm = None  # the generated module, imported in main()


# --------------------------------------------------------------------------
# processes


class Proc:
    """A child process; its stdout and stderr lines go to a queue and a log."""

    def __init__(self, name, args, log_dir, env=None, stdin=False):
        self.name = name
        self.args = args
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "a", buffering=1)
        self.log.write(f"$ {' '.join(args)}\n")
        self.lines = queue.Queue()
        self.p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.log.write(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pattern, timeout=WAIT):
        """The first line (from now) matching `pattern`, as a match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} printed no line matching {pattern!r} (see {self.log_path})")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"{self.name} exited ({self.p.wait()}) before printing {pattern!r} (see {self.log_path})"
                )
            m = rx.search(line)
            if m:
                return m

    def write(self, text):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def kill9(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        self.p.wait()

    def tail(self, n=25):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class World:
    """Everything the checks share: processes, phones, paths."""

    def __init__(self, bin_dir, bindings, tmp):
        self.bin_dir = bin_dir
        self.bindings = bindings
        self.tmp = tmp
        self.logs = os.path.join(tmp, "logs")
        os.makedirs(self.logs)
        self.procs = []
        self.agent_dir = os.path.join(tmp, "desktop")
        self.config = os.path.join(tmp, "config.toml")
        with open(self.config, "w") as f:
            f.write(f'[[executor]]\nname = "fixture"\ntype = "jsonl"\nprogram = "{FIXTURE}"\n')
            # Two projects: a phone picks one per task (the first is the default).
            self.project_dir = os.path.join(tmp, "project-site")
            os.makedirs(self.project_dir)
            f.write(f'\n[[project]]\nname = "home"\npath = "{tmp}"\n')
            f.write(f'\n[[project]]\nname = "site"\npath = "{self.project_dir}"\n')
        self.relay = None
        self.relay_addr = None
        self.relay_url = None
        self.other_relay_addr = None
        self.daemon = None
        self.phone1 = None  # TandemClient, file secret store
        self.phone2 = None  # TandemClient, an in-memory SecretStore from Python
        self.store2 = None
        self.desktop_id = None
        self.events1 = None  # Collector on phone1
        self.sub1 = None
        self.events2 = None
        self.sub2 = None
        self.phone2_quiet_since = None

    def start(self, name, args, **kw):
        p = Proc(name, args, self.logs, **kw)
        self.procs.append(p)
        return p

    def start_relay(self, name, data_dir, listen="127.0.0.1:0"):
        relay = self.start(
            name,
            [os.path.join(self.bin_dir, "tandem-relay"), "--listen", listen, "--data-dir", data_dir, "--tls", "off"],
            # /metrics is served only with a token (or on a listener of its own).
            env={"TANDEM_RELAY_LOG": os.environ.get("TEST_LOG", "info"), "TANDEM_RELAY_METRICS_TOKEN": METRICS_TOKEN},
        )
        m = relay.wait_line(r"tandem-relay listening on ws://(\S+)/v1/connect")
        return relay, m.group(1)

    def tandem(self, *args):
        return [
            os.path.join(self.bin_dir, "tandem"),
            "--data-dir",
            self.agent_dir,
            "--config",
            self.config,
            "--name",
            DESKTOP_NAME,
            *args,
        ]

    def pair_cmd(self, png=None, yes=True):
        args = ["pair", "--relay", self.relay_url, "--link-base", f"http://{self.relay_addr}/p"]
        args += ["--print-url", "--no-terminal-qr"]
        if png:
            args += ["--qr-png", png]
        if yes:
            args.append("--yes")
        return self.tandem(*args)

    def tandem_ok(self, *args):
        out = subprocess.run(self.tandem(*args), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"tandem {args}: {out.stdout}{out.stderr}"
        return out.stdout

    def tandem_ok_in(self, data_dir, *args):
        """`tandem ARGS` for another desktop's data directory."""
        cmd = [os.path.join(self.bin_dir, "tandem"), "--data-dir", data_dir, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"tandem {args}: {out.stdout}{out.stderr}"
        return out.stdout

    def close(self):
        for p in reversed(self.procs):
            p.stop()


# --------------------------------------------------------------------------
# SDK helpers


class Collector:
    """An EventListener that hands events to the asyncio loop. Keeps them
    all: `records` reads task events, `next` walks the rest with a cursor."""

    def __init__(self, loop, name):
        self.loop = loop
        self.name = name
        self.all = []
        self.cursor = 0
        self.changed = asyncio.Event()
        self.thread_names = set()

    def on_event(self, event):
        self.thread_names.add(os_thread_name())
        try:
            self.loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:
            pass  # the loop has closed: the run is over

    def _put(self, event):
        self.all.append(event)
        self.changed.set()

    def drain(self):
        self.cursor = len(self.all)

    def records(self, task_id):
        return [e.record for e in self.all if is_task(e, task_id)]

    async def _wait(self, what, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.name}: nothing {what}; last events: {self.all[-5:]}")
        try:
            await asyncio.wait_for(self.changed.wait(), left)
        except asyncio.TimeoutError:
            pass
        self.changed.clear()

    async def wait_for(self, what, cond, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while not cond():
            await self._wait(what, deadline)

    async def next(self, what, pred, timeout=WAIT):
        """The next event after the cursor for which `pred` holds."""
        deadline = time.monotonic() + timeout
        while True:
            while self.cursor < len(self.all):
                e = self.all[self.cursor]
                self.cursor += 1
                if pred(e):
                    return e
            await self._wait(what, deadline)

    async def task_until_finished(self, task_id, on_event=None, timeout=WAIT):
        """Task events of `task_id` up to and including its finish;
        `on_event` sees each once, as it arrives."""
        deadline = time.monotonic() + timeout
        handled = 0
        while True:
            recs = self.records(task_id)
            for r in recs[handled:]:
                handled += 1
                if on_event:
                    await on_event(r)
            if recs and isinstance(recs[-1].event, tm.TaskEvent.FINISHED):
                return recs
            await self._wait(f"finishing task {task_id}", deadline)


def os_thread_name():
    """The calling thread's OS name (Linux), None elsewhere."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def make_listener(collector):
    class Listener(tm.EventListener):
        def on_event(self, event):
            collector.on_event(event)

    return Listener()


def make_memory_store():
    class MemoryStore(tm.SecretStore):
        def __init__(self):
            self.secrets = {}
            self.calls = []

        def load(self, name):
            self.calls.append(("load", name))
            return self.secrets.get(name)

        def store(self, name, secret):
            self.calls.append(("store", name))
            self.secrets[name] = bytes(secret)

        def delete(self, name):
            self.calls.append(("delete", name))
            self.secrets.pop(name, None)

    return MemoryStore()


def is_task(e, task_id=None):
    return isinstance(e, tm.ClientEvent.TASK) and (task_id is None or e.record.task_id == task_id)


def variant(value):
    """The variant name of a generated enum value: `PROGRESS`, `CONNECTED`."""
    return type(value).__name__.rsplit(".", 1)[-1]


def kinds(records):
    return [variant(r.event) for r in records]


def check_offsets(records, what):
    offsets = [r.offset for r in records]
    assert offsets == list(range(len(records))), f"{what}: offsets {offsets} (each once, in order)"


async def open_client(name, data_dir, store=None):
    cfg = tm.ClientConfig(data_dir=data_dir, device_name=name, platform="python", app_version="test")
    if store is not None:
        cfg.secret_store = store
    return await tm.TandemClient.open(cfg)


async def expect_error(kind, coro):
    try:
        r = await coro
    except tm.MobileError as e:
        assert isinstance(e, kind), f"expected MobileError.{kind.__name__}, got {e!r}"
        return e
    raise AssertionError(f"expected MobileError.{kind.__name__}, got {r!r}")


def craft_link(link, *, origin=None, expires_at=None):
    """The same pairing link with another origin or expiry (the payload is
    version ‖ desktop key[32] ‖ secret[32] ‖ expires_at u32 ‖ …, base32)."""
    base, payload = link.split("#", 1)
    raw = bytearray(base64.b32decode(payload + "=" * (-len(payload) % 8)))
    if expires_at is not None:
        raw[65:69] = int(expires_at).to_bytes(4, "big")
    if origin is not None:
        base = origin + "/p"
    return base + "#" + base64.b32encode(bytes(raw)).decode().rstrip("=")


# --------------------------------------------------------------------------
# the checks


def squeeze(text):
    """Text without whitespace (generated code's spacing varies)."""
    return re.sub(r"\s+", "", text)


async def test_swift_and_kotlin_bindings_carry_the_public_api(w):
    swift_dir = os.path.join(w.bindings, "swift", "TandemMobile")
    swift = open(os.path.join(swift_dir, "Sources", "TandemMobile", "TandemMobile.swift")).read()
    header = open(os.path.join(swift_dir, "headers", "TandemMobileFFI.h")).read()
    modulemap = open(os.path.join(swift_dir, "headers", "module.modulemap")).read()
    package = open(os.path.join(swift_dir, "Package.swift")).read()
    for needle in [
        "open class TandemClient",
        "public static func `open`(config: ClientConfig)async throws  -> TandemClient",
        "func startPairing(qr: String)async throws  -> PairingHandle",
        "func desktops() -> [Desktop]",
        "func forget(desktopId: String)async throws",
        "func submit(desktopId: String, text: String, executor: String? = nil, project: String? = nil)async throws  -> String",
        "func choices(desktopId: String) -> Choices?",
        "public struct Choices",
        "func followUp(desktopId: String, taskId: String, text: String)async throws",
        "func cancelTask(desktopId: String, taskId: String)async throws",
        "func decide(desktopId: String, taskId: String, approvalId: String, allow: Bool)async throws",
        "func history(desktopId: String, taskId: String, fromOffset: UInt64 = UInt64(0))async throws  -> HistoryPage",
        "func tasks(desktopId: String)async throws  -> [TaskSummary]",
        "func subscribe(listener: EventListener) -> SubscriptionHandle",
        "func shutdown()async",
        "open class PairingHandle",
        "func sas() -> String",
        "func wait()async throws  -> Desktop",
        "open class SubscriptionHandle",
        "public protocol EventListener",
        "func onEvent(event: ClientEvent)",
        "public protocol SecretStore",
        "public enum MobileError: Swift.Error",
        "case Expired(message: String)",
        "case WrongRelay(message: String)",
        "case Revoked(message: String)",
        "public enum ClientEvent",
        "public enum TaskEvent",
        "case approvalRequest(",
        "case task(",
        "public struct Desktop",
        "public struct HistoryPage",
        "public struct ClientConfig",
        "public enum ConnectionState",
    ]:
        assert squeeze(needle) in squeeze(swift), f"Swift bindings lack {needle!r}"
    assert "uniffi_tandem_mobile_fn_method_tandemclient_submit" in header
    assert "module TandemMobileFFI" in modulemap
    assert 'binaryTarget(name: "TandemMobileFFI"' in package

    kt_path = os.path.join(w.bindings, "kotlin", "tandem-mobile", "src", "main", "kotlin", "dev", "tandem", "mobile", "tandem_mobile.kt")
    kotlin = open(kt_path).read()
    gradle = open(os.path.join(w.bindings, "kotlin", "tandem-mobile", "build.gradle.kts")).read()
    for needle in [
        "package dev.tandem.mobile",
        "open class TandemClient",
        "suspend fun `open`(`config`: ClientConfig): TandemClient",
        "suspend fun `startPairing`(`qr`: kotlin.String): PairingHandle",
        "fun `desktops`(): List<Desktop>",
        "suspend fun `submit`(`desktopId`: kotlin.String, `text`: kotlin.String, `executor`: kotlin.String? = null, `project`: kotlin.String? = null): kotlin.String",
        "fun `choices`(`desktopId`: kotlin.String): Choices?",
        "suspend fun `followUp`(",
        "suspend fun `cancelTask`(",
        "suspend fun `decide`(",
        "suspend fun `history`(",
        "suspend fun `tasks`(",
        "fun `subscribe`(`listener`: EventListener): SubscriptionHandle",
        "interface EventListener",
        "interface SecretStore",
        "sealed class MobileException",
        "class Expired(",
        "sealed class ClientEvent",
        "sealed class TaskEvent",
        "data class Desktop",
        "data class HistoryPage",
    ]:
        assert squeeze(needle) in squeeze(kotlin), f"Kotlin bindings lack {needle!r}"
    assert 'namespace = "dev.tandem.mobile"' in gradle
    assert os.path.isdir(os.path.join(w.bindings, "kotlin", "tandem-mobile", "src", "main", "jniLibs"))


async def test_a_damaged_code_is_an_invalid_qr_error(w):
    phone = await open_client("Scratch", os.path.join(w.tmp, "scratch"))
    await expect_error(tm.MobileError.InvalidQr, phone.start_pairing("hello, not a link"))
    await expect_error(tm.MobileError.InvalidQr, phone.start_pairing("https://example.com/p#NOTBASE32!"))
    assert phone.desktops() == []
    await expect_error(tm.MobileError.UnknownDesktop, phone.submit("no-such-desktop", "hi"))
    await phone.shutdown()


async def test_pair_from_the_link_tandem_pair_prints(w):
    w.relay, w.relay_addr = w.start_relay("relay", os.path.join(w.tmp, "relay"))
    w.relay_url = f"ws://{w.relay_addr}/v1/connect"
    loop = asyncio.get_running_loop()

    w.phone1 = await open_client("Phone One", os.path.join(w.tmp, "phone1"))
    w.events1 = Collector(loop, "phone1")
    w.sub1 = w.phone1.subscribe(make_listener(w.events1))
    assert w.sub1.is_active()

    pair = w.start("pair-1", w.pair_cmd())
    link = pair.wait_line(r"pairing link: (\S+)").group(1)
    # On plain http every code opens its own address: /p?n=<8 base32 characters>.
    assert re.match(rf"http://{re.escape(w.relay_addr)}/p\?n=[A-Z2-7]{{8}}#", link), link
    handle = await w.phone1.start_pairing(link)
    assert handle.desktop_name() == DESKTOP_NAME
    code = pair.wait_line(r"Code: (\d{3} \d{3})").group(1)
    assert re.fullmatch(r"\d{3} \d{3}", handle.sas()), handle.sas()
    assert handle.sas() == code, f"phone shows {handle.sas()}, desktop {code}"
    desktop = await handle.wait()
    pair.wait_line(r"Paired with Phone One")
    assert pair.p.wait(timeout=WAIT) == 0
    assert desktop.name == DESKTOP_NAME
    assert desktop.relay_url == w.relay_url, desktop.relay_url
    w.desktop_id = desktop.desktop_id
    assert [d.desktop_id for d in w.phone1.desktops()] == [w.desktop_id]
    await expect_error(tm.MobileError.InvalidUse, handle.wait())
    devices = w.tandem_ok("devices")
    assert "Phone One" in devices and w.phone1.device_id()[:8] in devices, devices


async def test_expired_other_relay_and_qr_png_codes(w):
    # A second relay: a code that points there names a mailbox it never had.
    _, w.other_relay_addr = w.start_relay("relay-other", os.path.join(w.tmp, "relay-other"))
    png = os.path.join(w.tmp, "qr.png")
    pair = w.start("pair-2", w.pair_cmd(png=png))
    link = pair.wait_line(r"pairing link: (\S+)").group(1)
    scanned = subprocess.run(["zbarimg", "--raw", "-q", png], capture_output=True, text=True, check=True).stdout.strip()
    assert scanned == link, f"the QR code carries the printed link: {scanned!r} != {link!r}"

    scratch = await open_client("Scratch", os.path.join(w.tmp, "scratch"))
    expired = craft_link(link, expires_at=time.time() - 60)
    e = await expect_error(tm.MobileError.Expired, scratch.start_pairing(expired))
    assert "expired" in str(e), str(e)
    elsewhere = craft_link(link, origin=f"http://{w.other_relay_addr}")
    await expect_error(tm.MobileError.WrongRelay, scratch.start_pairing(elsewhere))
    await scratch.shutdown()

    # The real code still works: a second phone, keys in an app-supplied store.
    loop = asyncio.get_running_loop()
    w.store2 = make_memory_store()
    w.phone2 = await open_client("Phone Two", os.path.join(w.tmp, "phone2"), w.store2)
    assert "device-key" in w.store2.secrets, w.store2.calls
    assert not os.path.exists(os.path.join(w.tmp, "phone2", "secrets", "device-key"))
    w.events2 = Collector(loop, "phone2")
    w.sub2 = w.phone2.subscribe(make_listener(w.events2))
    handle = await w.phone2.start_pairing(scanned)
    assert handle.sas() == pair.wait_line(r"Code: (\d{3} \d{3})").group(1)
    desktop = await handle.wait()
    assert desktop.desktop_id == w.desktop_id
    pair.wait_line(r"Paired with Phone Two")
    assert pair.p.wait(timeout=WAIT) == 0

    # Used once: a third phone gets a pairing error, not a pairing.
    third = await open_client("Phone Three", os.path.join(w.tmp, "phone3"))
    try:
        await third.start_pairing(scanned)
        raise AssertionError("a used code paired a third phone")
    except (tm.MobileError.AlreadyClaimed, tm.MobileError.WrongRelay, tm.MobileError.Expired):
        pass
    await third.shutdown()


async def test_the_desktop_can_refuse_a_pairing(w):
    pair = w.start("pair-refuse", w.pair_cmd(yes=False), stdin=True)
    link = pair.wait_line(r"pairing link: (\S+)").group(1)
    phone = await open_client("Refused Phone", os.path.join(w.tmp, "phone-refused"))
    handle = await phone.start_pairing(link)
    pair.wait_line(r"Code: " + handle.sas())
    pair.write("n\n")
    await expect_error(tm.MobileError.DesktopRefused, asyncio.wait_for(handle.wait(), 60))
    assert phone.desktops() == []
    pair.stop()
    await phone.shutdown()


async def test_the_agent_runs_and_both_phones_see_it_online(w):
    w.daemon = w.start(
        "agent",
        w.tandem("run"),
        env={"TANDEM_IDLE_DETACH_SECS": str(IDLE_DETACH_SECS), "TANDEM_LOG": os.environ.get("TEST_LOG", "info")},
    )
    w.daemon.wait_line(r"Connected\. 2 paired device")
    w.phone2_quiet_since = time.monotonic()
    for phone, events in ((w.phone1, w.events1), (w.phone2, w.events2)):
        deadline = time.monotonic() + WAIT
        while True:
            [d] = phone.desktops()
            if d.online and isinstance(d.connection, tm.ConnectionState.CONNECTED):
                break
            assert time.monotonic() < deadline, f"desktop never online: {d}"
            await asyncio.sleep(0.1)


async def test_a_task_streams_progress_a_tool_result_and_an_approval(w):
    w.events1.drain()
    approvals = []

    async def answer(r):
        if isinstance(r.event, tm.TaskEvent.APPROVAL_REQUEST):
            approvals.append(r.event)
            await w.phone1.decide(w.desktop_id, r.task_id, r.event.approval_id, True)

    task = await w.phone1.submit(w.desktop_id, "demo please", "fixture")
    got = await w.events1.task_until_finished(task, answer)
    check_offsets(got, "demo")
    assert kinds(got) == [
        "ACCEPTED", "PROGRESS", "TOOL_CALL", "TOOL_RESULT", "APPROVAL_REQUEST",
        "APPROVAL_RESOLVED", "PROGRESS", "FINISHED",
    ], kinds(got)
    ev = [r.event for r in got]
    assert ev[0].executor == "fixture" and ev[0].text == "demo please"
    assert ev[0].project == "home", "the default project"
    assert ev[1].text == "reading crates/foo"
    assert ev[2].call_id == "c1" and ev[2].name == "bash"
    assert json.loads(ev[2].input_json) == {"command": "cargo test", "cwd": "."}
    assert ev[3].call_id == "c1" and ev[3].output == "1 failed" and ev[3].is_error
    assert approvals and approvals[0].summary == "edit src/lib.rs" and approvals[0].detail == "+fix"
    assert approvals[0].expires_at_ms > time.time() * 1000
    assert ev[5].approval_id == "a1" and ev[5].allow and ev[5].by == f"phone:{w.phone1.device_id()}", ev[5]
    assert ev[6].text == "allowed: editing"
    assert ev[7].status == tm.FinishStatus.SUCCEEDED and ev[7].summary == "fixed the test"
    # The finish names the tool whose result was an error, and nothing unanswered.
    assert ev[7].failed == ["bash"] and ev[7].expired == [] and ev[7].denied == [], ev[7]
    assert all(r.desktop_id == w.desktop_id and r.at_ms > 0 for r in got)
    if w.events1.thread_names != {None}:
        assert w.events1.thread_names == {"tandem-sdk"}, w.events1.thread_names
    w.demo_task, w.demo_events = task, got


async def test_history_replays_from_any_offset_and_tasks_lists_it(w):
    page = await w.phone1.history(w.desktop_id, w.demo_task, 0)
    assert page.events == w.demo_events, "history from 0 is what the listener saw"
    assert page.next_offset == len(w.demo_events) and not page.more
    page = await w.phone1.history(w.desktop_id, w.demo_task, 3)
    assert page.events == w.demo_events[3:]
    tasks = await w.phone1.tasks(w.desktop_id)
    [t] = [t for t in tasks if t.task_id == w.demo_task]
    assert t.state == tm.TaskState.FINISHED and t.status == tm.FinishStatus.SUCCEEDED, t
    assert t.next_offset == len(w.demo_events) and t.executor == "fixture"
    assert t.project == "home"


async def test_the_desktop_offers_its_executors_and_projects(w):
    # They came with the task list (`tasks` above), and as an event.
    c = w.phone1.choices(w.desktop_id)
    assert c is not None, "no choices after a task list"
    assert [(e.name, e.kind) for e in c.executors] == [("fixture", "jsonl")], c
    assert c.projects == ["home", "site"] and c.default_project == "home", c
    assert c.default_executor == "fixture"
    assert any(isinstance(e, tm.ClientEvent.CHOICES) and e.desktop_id == w.desktop_id for e in w.events1.all)
    assert w.phone1.choices("no-such-desktop") is None
    # A project picked; an unknown one refused, never run.
    w.events1.drain()
    task = await w.phone1.submit(w.desktop_id, "where", None, "site")
    got = await w.events1.task_until_finished(task, None)
    assert got[0].event.project == "site", got[0]
    assert got[-1].event.summary == os.path.realpath(w.project_dir), got[-1]
    bad = await w.phone1.submit(w.desktop_id, "where", None, "nope")
    e = await w.events1.next(
        "a refusal of the unknown project",
        lambda e: isinstance(e, tm.ClientEvent.REFUSED) and e.task_id == bad,
    )
    assert e.code == "unknown_project", e
    assert w.events1.records(bad) == [], "an unknown project never runs"


async def test_sessions_and_always_allow_reach_the_desktop(w):
    # A jsonl executor keeps no sessions to continue: refused, with the code.
    # (A flat error: the code is in its message.)
    e = await expect_error(tm.MobileError.Refused, w.phone1.sessions(w.desktop_id, None, None))
    assert "(not_supported)" in str(e), e
    e = await expect_error(tm.MobileError.Refused, w.phone1.sessions(w.desktop_id, "nope", None))
    assert "(unknown_executor)" in str(e), e
    # "Always allow" from a phone the desktop gave no `rules` scope: the
    # step is allowed once, no rule is added, and the phone is told why.
    w.events1.drain()

    async def answer(r):
        if isinstance(r.event, tm.TaskEvent.APPROVAL_REQUEST):
            await w.phone1.allow_always(w.desktop_id, r.task_id, r.event.approval_id)

    task = await w.phone1.submit(w.desktop_id, "demo please", "fixture")
    got = await w.events1.task_until_finished(task, answer)
    resolved = [r.event for r in got if isinstance(r.event, tm.TaskEvent.APPROVAL_RESOLVED)]
    assert resolved and resolved[0].allow and resolved[0].rule is None, resolved
    assert "allowed: editing" in [r.event.text for r in got if isinstance(r.event, tm.TaskEvent.PROGRESS)]
    e = await w.events1.next(
        "why no rule was added",
        lambda e: isinstance(e, tm.ClientEvent.REFUSED) and e.task_id == task,
    )
    assert e.code == "scope", e


METRICS_TOKEN = "test-metrics-token"


def relay_frames_forwarded(addr):
    """The relay's count of frames it stored for a recipient (/metrics)."""
    req = urllib.request.Request(f"http://{addr}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tandem_relay_frames_forwarded_total "):
                return int(float(line.split()[-1]))
    raise AssertionError("no tandem_relay_frames_forwarded_total in /metrics")


async def test_decrypt_notification_refuses_what_it_cannot_open(w):
    """What a Notification Service Extension / data-message handler gets
    when the push is not one this phone can open: the documented errors
    (`Protocol`: show a generic notification; `Storage`: the keys cannot be
    read), never a crash. Through the module function (no client) and the
    client's method."""
    phone_dir = os.path.join(w.tmp, "phone1")
    sealed_shape = bytes([1]) + os.urandom(8 + 24 + 256 + 16)  # version, key id, nonce, padded text, tag
    cases = [
        (b"not a push at all", "neither a sealed push nor its base64"),
        (b"", None),
        (sealed_shape, None),  # the shape of a sealed push, under no key of this phone
        (base64.b64encode(sealed_shape), None),  # the same as APNs' / FCM's "t" carries it
        (bytes([1]) + b"\x00" * 10, None),  # too short
        (bytes([9]) + os.urandom(400), None),  # an unknown seal version
    ]
    for payload, words in cases:
        for open_it in (lambda p: tm.decrypt_notification(phone_dir, p), w.phone1.decrypt_notification):
            try:
                got = open_it(payload)
            except tm.MobileError.Protocol as e:
                assert words is None or words in str(e), (payload[:16], str(e))
            else:
                raise AssertionError(f"{payload[:16]!r} opened: {got!r}")
    # A data directory without push keys at all (push never turned on).
    empty = os.path.join(w.tmp, "no-push-here")
    os.makedirs(empty, exist_ok=True)
    try:
        tm.decrypt_notification(empty, base64.b64encode(sealed_shape))
        raise AssertionError("opened without keys")
    except tm.MobileError.Protocol:
        pass
    # Keys that cannot be read: Storage.
    damaged = os.path.join(w.tmp, "damaged-push")
    os.makedirs(damaged, exist_ok=True)
    with open(os.path.join(damaged, "push.json"), "w") as f:
        f.write('{"keys": [torn')
    try:
        tm.decrypt_notification(damaged, sealed_shape)
        raise AssertionError("opened with damaged keys")
    except tm.MobileError.Storage as e:
        assert "push.json" in str(e), str(e)


async def test_enable_push_on_a_relay_without_apns_or_fcm_is_refused(w):
    """The harness's relay has no [apns] or [fcm]: turning push on with an
    APNs or FCM token is PushRefused (the relay answers push_unavailable),
    and leaves push off; the phone keeps working."""
    phone_dir = os.path.join(w.tmp, "phone1")
    choices = tm.PushChoices(approvals=True, finished=True, missing=False)
    for platform in (tm.PushPlatform.APNS(token=os.urandom(32)), tm.PushPlatform.FCM(token="fcm-registration-token")):
        e = await expect_error(tm.MobileError.PushRefused, w.phone1.enable_push(platform, choices))
        assert "refused push" in str(e), str(e)
        assert not os.path.exists(os.path.join(phone_dir, "push.json")), "push was turned on anyway"
    # Off was never on: turning it off is fine.
    await w.phone1.disable_push()
    assert not os.path.exists(os.path.join(phone_dir, "push.json"))
    w.phone1.set_foreground(False)
    w.phone1.set_foreground(True)
    task = await w.phone1.submit(w.desktop_id, "count 1 1")
    await w.events1.task_until_finished(task)


async def test_idle_phones_and_desktop_send_nothing(w):
    # No task runs: apart from pings (not forwarded), nothing should flow,
    # in particular no acknowledgements answering acknowledgements.
    await asyncio.sleep(1.0)
    before = relay_frames_forwarded(w.relay_addr)
    await asyncio.sleep(3.0)
    sent = relay_frames_forwarded(w.relay_addr) - before
    assert sent <= 4, f"{sent} records went through the relay in 3 s while everything was idle"


async def test_follow_up_and_cancel(w):
    w.events1.drain()
    task = await w.phone1.submit(w.desktop_id, "follow")

    async def reply(r):
        if isinstance(r.event, tm.TaskEvent.PROGRESS) and r.event.text == "waiting for a follow-up":
            await w.phone1.follow_up(w.desktop_id, task, "and the docs")

    got = await w.events1.task_until_finished(task, reply)
    check_offsets(got, "follow")
    assert any(isinstance(r.event, tm.TaskEvent.FOLLOW_UP) and r.event.text == "and the docs" for r in got), got
    assert got[-1].event.status == tm.FinishStatus.SUCCEEDED

    task = await w.phone1.submit(w.desktop_id, "sleep")

    async def stop(r):
        if isinstance(r.event, tm.TaskEvent.PROGRESS) and r.event.text == "sleeping":
            await w.phone1.cancel_task(w.desktop_id, task)

    got = await w.events1.task_until_finished(task, stop)
    check_offsets(got, "sleep")
    assert got[-1].event.status == tm.FinishStatus.CANCELLED, got[-1]


async def test_relay_kill_and_restart_loses_and_repeats_nothing(w):
    w.events1.drain()
    n = 60
    task = await w.phone1.submit(w.desktop_id, f"count {n} 50")
    start = len(w.events1.all)

    def lost(e):
        return (
            isinstance(e, tm.ClientEvent.CONNECTION)
            and e.desktop_id == w.desktop_id
            and not isinstance(e.state, tm.ConnectionState.CONNECTED)
        )

    await w.events1.wait_for("early progress", lambda: len(w.events1.records(task)) >= 6)
    w.relay.kill9()
    await w.events1.next("the connection lost", lost)
    # While the relay is down: a task goes into the outbox (nothing is lost
    # in that direction either).
    queued = asyncio.ensure_future(w.phone1.submit(w.desktop_id, "count 3 10"))
    await asyncio.sleep(1.0)
    w.relay, addr = w.start_relay("relay-restarted", os.path.join(w.tmp, "relay"), listen=w.relay_addr)
    assert addr == w.relay_addr
    got = await w.events1.task_until_finished(task, timeout=90)
    check_offsets(got, "count across a relay restart")
    progress = [r.event.text for r in got if isinstance(r.event, tm.TaskEvent.PROGRESS)]
    assert progress == [f"n={i}" for i in range(n)], progress
    assert got[-1].event.status == tm.FinishStatus.SUCCEEDED
    second = await asyncio.wait_for(queued, WAIT)
    more = await w.events1.task_until_finished(second, timeout=60)
    check_offsets(more, "the task sent while the relay was down")
    states = [
        variant(e.state)
        for e in w.events1.all[start:]
        if isinstance(e, tm.ClientEvent.CONNECTION) and e.desktop_id == w.desktop_id
    ]
    assert "RECONNECTING" in states and states[-1] == "CONNECTED", f"reconnected: {states}"
    assert isinstance(w.phone1.desktops()[0].connection, tm.ConnectionState.CONNECTED)
    page = await w.phone1.history(w.desktop_id, task, 0)
    assert page.events == got, "history after the restart matches what was delivered"


async def test_an_idle_phone_is_detached(w):
    # Phone two has sent nothing since the agent started.
    e = await w.events2.next(
        "detached", lambda e: isinstance(e, tm.ClientEvent.DETACHED), timeout=IDLE_DETACH_SECS + WAIT
    )
    assert e.desktop_id == w.desktop_id and e.idle_secs == IDLE_DETACH_SECS, e
    assert not any(isinstance(x, tm.ClientEvent.DETACHED) for x in w.events1.all), "the busy phone stays attached"


async def test_cancelled_or_dropped_subscriptions_stop(w):
    loop = asyncio.get_running_loop()
    cancelled = Collector(loop, "cancelled")
    dropped = Collector(loop, "dropped")
    h1 = w.phone1.subscribe(make_listener(cancelled))
    h2 = w.phone1.subscribe(make_listener(dropped))
    h1.cancel()
    h1.cancel()
    assert not h1.is_active() and h2.is_active()
    del h2
    gc.collect()
    w.events1.drain()
    task = await w.phone1.submit(w.desktop_id, "count 2 10")
    await w.events1.task_until_finished(task)
    await asyncio.sleep(0.5)
    assert cancelled.all == [] and dropped.all == [], (cancelled.all, dropped.all)


async def test_reopening_keeps_the_identity_and_the_desktops(w):
    device = w.phone1.device_id()
    w.sub1.cancel()
    await w.phone1.shutdown()
    await expect_error(tm.MobileError.Closed, w.phone1.submit(w.desktop_id, "count 1 1"))
    w.phone1 = await open_client("Phone One", os.path.join(w.tmp, "phone1"))
    assert w.phone1.device_id() == device
    assert [d.desktop_id for d in w.phone1.desktops()] == [w.desktop_id]
    w.events1 = Collector(asyncio.get_running_loop(), "phone1-reopened")
    w.sub1 = w.phone1.subscribe(make_listener(w.events1))
    task = await w.phone1.submit(w.desktop_id, "count 2 10")
    got = await w.events1.task_until_finished(task)
    check_offsets(got, "after reopening")


async def test_lost_messages_and_a_damaged_desktop_file_are_sdk_events(w):
    """A gap the phone cannot fill (its state older than what it already
    acknowledged to the desktop, as after a restore from an older copy) is
    a MessagesLost event; a desktop file that cannot be read is moved aside
    and reported (DesktopSetAside) to the first listener after open, and
    the phone opens with its other desktops."""
    # A request carries the acknowledgement of every event before it.
    await w.phone1.tasks(w.desktop_id)
    w.sub1.cancel()
    await w.phone1.shutdown()
    phone_dir = os.path.join(w.tmp, "phone1")
    path = os.path.join(phone_dir, "desktops", f"{w.desktop_id}.json")
    with open(path) as f:
        state = json.load(f)
    delivered = state["link"]["inbound"]["delivered"]
    assert delivered > 3, delivered
    state["link"]["inbound"]["delivered"] = delivered - 3
    with open(path, "w") as f:
        json.dump(state, f)
    damaged_id = "A" * 26
    damaged = os.path.join(phone_dir, "desktops", f"{damaged_id}.json")
    with open(damaged, "w") as f:
        f.write('{"desktop_id": "torn')

    w.phone1 = await open_client("Phone One", phone_dir)
    w.events1 = Collector(asyncio.get_running_loop(), "phone1-restored")
    w.sub1 = w.phone1.subscribe(make_listener(w.events1))
    aside = await w.events1.next("set aside", lambda e: isinstance(e, tm.ClientEvent.DESKTOP_SET_ASIDE))
    assert aside.desktop_id == damaged_id, aside
    assert aside.moved_to and os.path.exists(aside.moved_to) and not os.path.exists(damaged), aside
    assert damaged_id in aside.message and "pair with it again" in aside.message, aside.message
    assert [d.desktop_id for d in w.phone1.desktops()] == [w.desktop_id]

    task = await w.phone1.submit(w.desktop_id, "count 1 10")
    await w.events1.task_until_finished(task)
    lost = [e for e in w.events1.all if isinstance(e, tm.ClientEvent.MESSAGES_LOST)]
    assert len(lost) == 1, lost
    assert lost[0].desktop_id == w.desktop_id
    # From the first the phone lacks to the last the desktop dropped (the
    # list's answer may still have been held, and then was sent again).
    assert lost[0].from_seq == delivered - 2, (delivered, lost[0])
    assert lost[0].to_seq in (delivered - 1, delivered), (delivered, lost[0])


async def test_a_revoked_phone_gets_a_revoked_error(w):
    device = w.phone2.device_id()
    out = w.tandem_ok("revoke", device)
    assert "Phone Two" in out and "The relay refuses it from now on." in out, out
    # The relay refuses the phone's messages to that desktop from now on. The
    # submit was sealed and queued before the refusal: `Queued` (it stays in
    # the outbox and may still arrive; a retry reuses its task id), naming
    # the cause.
    e = await expect_error(tm.MobileError.Queued, w.phone2.submit(w.desktop_id, "count 1 1"))
    assert "revoked" in str(e), e
    [d] = w.phone2.desktops()
    assert not d.online, f"the desktop no longer shows as online: {d}"
    # Phone one is unaffected.
    task = await w.phone1.submit(w.desktop_id, "count 1 1")
    await w.events1.task_until_finished(task)


async def test_forgetting_a_desktop(w):
    await w.phone2.forget(w.desktop_id)
    assert w.phone2.desktops() == []
    await expect_error(tm.MobileError.UnknownDesktop, w.phone2.submit(w.desktop_id, "hi"))
    await expect_error(tm.MobileError.UnknownDesktop, w.phone2.forget(w.desktop_id))
    await w.phone2.shutdown()


def probe(w, link_file, frames, desktop_id):
    """What a stolen copy of `link_file` opens of the records `desktop_id`
    had delivered in the recording `frames` (the `tandem-e2e probe` tool:
    Python cannot decrypt)."""
    out = subprocess.run(
        [os.path.join(w.bin_dir, "tandem-e2e"), "probe", "--link", link_file, "--frames", frames, "--from", desktop_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def snapshot(path, to):
    """A thief's copy of a stored file."""
    with open(path, "rb") as f:
        data = f.read()
    with open(to, "wb") as f:
        f.write(data)
    return to


async def test_sessions_renew_and_a_stolen_snapshot_opens_only_its_own_session(w):
    # A desktop and a phone of their own, on a relay of their own, both
    # devices dialing it through a recording tap: the relay's traffic as
    # whoever records it holds it. The schedule is short on both sides: the
    # agent's through its environment, the phone's through ClientConfig.
    tool = os.path.join(w.bin_dir, "tandem-e2e")
    _, relay_addr = w.start_relay("relay-renewal", os.path.join(w.tmp, "relay-renewal"))
    frames = os.path.join(w.tmp, "renewal-frames.jsonl")
    tap = w.start("tap", [tool, "tap", "--upstream", relay_addr, "--out", frames], stdin=True)
    tap_addr = tap.wait_line(r"tap listening on ws://(\S+)/v1/connect").group(1)
    desk = os.path.join(w.tmp, "desktop-renewal")

    def tandem(*args):
        return [os.path.join(w.bin_dir, "tandem"), "--data-dir", desk, "--config", w.config, "--name", DESKTOP_NAME, *args]

    pair = w.start(
        "pair-renewal",
        tandem("pair", "--relay", f"ws://{tap_addr}/v1/connect", "--link-base", f"http://{tap_addr}/p", "--print-url", "--no-terminal-qr", "--yes"),
    )
    link = pair.wait_line(r"pairing link: (\S+)").group(1)
    phone_dir = os.path.join(w.tmp, "phone-renewal")
    cfg = tm.ClientConfig(data_dir=phone_dir, device_name="Renewing Phone", platform="python", app_version="test")
    cfg.session_renew_after_ms = 3000
    cfg.session_rekey_after_ms = 1000
    cfg.session_renewal_timeout_ms = 2000
    phone = await tm.TandemClient.open(cfg)
    events = Collector(asyncio.get_running_loop(), "renewal")
    sub = phone.subscribe(make_listener(events))
    try:
        handle = await phone.start_pairing(link)
        assert handle.sas() == pair.wait_line(r"Code: (\d{3} \d{3})").group(1)
        desktop = (await handle.wait()).desktop_id
        assert pair.p.wait(timeout=WAIT) == 0
        agent = w.start(
            "agent-renewal",
            tandem("run"),
            env={
                "TANDEM_SESSION_RENEW_SECS": "2",
                "TANDEM_SESSION_REKEY_SECS": "1",
                "TANDEM_SESSION_RENEWAL_TIMEOUT_SECS": "2",
                "TANDEM_LOG": os.environ.get("TEST_LOG", "info"),
            },
        )
        agent.wait_line(r"Connected\. 1 paired device")
        desktop_file = os.path.join(phone_dir, "desktops", f"{desktop}.json")
        peer_file = os.path.join(desk, "peers", f"{phone.device_id()}.json")
        snap0 = snapshot(desktop_file, os.path.join(w.tmp, "stolen-before.json"))
        agent_before = probe(w, peer_file, frames, phone.device_id())["sessions"]["current"]

        # Traffic while the sessions renew.
        task = await phone.submit(desktop, "count 30 100")
        check_offsets(await events.task_until_finished(task, timeout=60), "count while renewing")

        # A copy taken once a renewal is done and the old session erased.
        deadline = time.monotonic() + WAIT
        before0 = probe(w, snap0, frames, desktop)["sessions"]
        while True:
            taken_ms = time.time() * 1000
            snap1 = snapshot(desktop_file, os.path.join(w.tmp, "stolen-after.json"))
            now = probe(w, snap1, frames, desktop)["sessions"]
            if now["current"] != before0["current"] and now["previous"] is None and now["next"] is None:
                break
            assert time.monotonic() < deadline, f"the phone's session never renewed: {now}"
            await asyncio.sleep(0.1)
        task = await phone.submit(desktop, "count 30 100")
        check_offsets(await events.task_until_finished(task, timeout=60), "count after the copy")

        # Both files changed session.
        agent_now = probe(w, peer_file, frames, phone.device_id())
        assert agent_now["sessions"]["current"] != agent_before, "the agent's peer file never renewed"
        status = json.loads(w.tandem_ok_in(desk, "status", "--json"))
        session = status["devices"][0]["session"]
        assert session["renewals"] >= 2 and "send_epoch" in session, session

        # The copy from before opens records of its own session, and none
        # sealed under the sessions that came after it.
        early = probe(w, snap0, frames, desktop)
        held = {s for s in early["sessions"].values() if s}
        later = [r for r in early["records"] if r["session"] not in held]
        assert len(later) >= 10, f"too few records under later sessions: {len(later)}"
        assert {r["verdict"] for r in later} == {"wrong_session"}, later
        own = [r for r in early["records"] if r["session"] == early["sessions"]["current"]]
        assert any(r["verdict"] == "opened" for r in own), "the probe opened nothing of the copy's own session"

        # The copy from after opens nothing captured before it under older
        # sessions, nor anything under the sessions after it.
        late = probe(w, snap1, frames, desktop)
        current = late["sessions"]["current"]
        earlier = [r for r in late["records"] if r["at_ms"] < taken_ms and r["session"] != current]
        assert len(earlier) >= 10, f"too few records under earlier sessions: {len(earlier)}"
        assert {r["verdict"] for r in earlier} == {"wrong_session"}, earlier
        after = [r for r in late["records"] if r["session"] != current and r["at_ms"] > taken_ms]
        assert {r["verdict"] for r in after} <= {"wrong_session"}, after
    finally:
        sub.cancel()
        await phone.shutdown()


CHECKS = [
    test_swift_and_kotlin_bindings_carry_the_public_api,
    test_a_damaged_code_is_an_invalid_qr_error,
    test_pair_from_the_link_tandem_pair_prints,
    test_expired_other_relay_and_qr_png_codes,
    test_the_desktop_can_refuse_a_pairing,
    test_the_agent_runs_and_both_phones_see_it_online,
    test_a_task_streams_progress_a_tool_result_and_an_approval,
    test_history_replays_from_any_offset_and_tasks_lists_it,
    test_the_desktop_offers_its_executors_and_projects,
    test_sessions_and_always_allow_reach_the_desktop,
    test_decrypt_notification_refuses_what_it_cannot_open,
    test_enable_push_on_a_relay_without_apns_or_fcm_is_refused,
    test_idle_phones_and_desktop_send_nothing,
    test_follow_up_and_cancel,
    test_relay_kill_and_restart_loses_and_repeats_nothing,
    test_an_idle_phone_is_detached,
    test_cancelled_or_dropped_subscriptions_stop,
    test_reopening_keeps_the_identity_and_the_desktops,
    test_lost_messages_and_a_damaged_desktop_file_are_sdk_events,
    test_a_revoked_phone_gets_a_revoked_error,
    test_forgetting_a_desktop,
    test_sessions_renew_and_a_stolen_snapshot_opens_only_its_own_session,
]


# Later checks need what these set up: when one fails, the rest are skipped
# (and counted as failed).
SETUP = {
    test_pair_from_the_link_tandem_pair_prints,
    test_expired_other_relay_and_qr_png_codes,
    test_the_agent_runs_and_both_phones_see_it_online,
}


async def run_checks(w, only):
    passed, failed = 0, []
    for i, check in enumerate(CHECKS):
        if only and not any(o in check.__name__ for o in only) and check not in SETUP:
            continue
        if failed and failed[-1] in {c.__name__ for c in SETUP}:
            rest = [c.__name__ for c in CHECKS[i:]]
            print(f"skipped after a failed setup check: {', '.join(rest)}")
            failed += rest
            break
        started = time.monotonic()
        try:
            await asyncio.wait_for(check(w), 240)
        except BaseException as e:  # noqa: BLE001 - report and go on
            if isinstance(e, KeyboardInterrupt):
                raise
            failed.append(check.__name__)
            print(f"FAIL {check.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
            traceback.print_exc()
            for p in w.procs:
                print(f"--- {p.name} (last lines of {p.log_path})\n{p.tail()}", flush=True)
        else:
            passed += 1
            print(f"ok   {check.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
    return passed, failed


async def run_and_clean_up(w, only):
    try:
        return await run_checks(w, only)
    finally:
        for sub in (w.sub1, w.sub2):
            if sub is not None:
                sub.cancel()
        for phone in (w.phone1, w.phone2):
            if phone is not None:
                await phone.shutdown()


def main():
    global tm
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="where tandem-relay and tandem are")
    ap.add_argument("--bindings", required=True, help="the output directory of bindings.sh")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("only", nargs="*", help="run only checks whose names contain one of these")
    args = ap.parse_args()
    if shutil.which("zbarimg") is None:
        sys.exit("zbarimg is needed (Debian package zbar-tools; ./scripts/test.sh installs it)")
    sys.path.insert(0, os.path.join(args.bindings, "python"))
    import tandem_mobile  # noqa: E402

    tm = tandem_mobile
    tmp = tempfile.mkdtemp(prefix="tandem-mobile-test-")
    w = World(os.path.abspath(args.bin_dir), os.path.abspath(args.bindings), tmp)
    started = time.monotonic()
    try:
        passed, failed = asyncio.run(run_and_clean_up(w, args.only))
    finally:
        w.close()
        if args.keep or os.environ.get("KEEP_TMP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nSDK version {tm.sdk_version()}; {time.monotonic() - started:.1f}s")
    for name in failed:
        print(f"failed: {name}")
    print(f"mobile SDK: {passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
