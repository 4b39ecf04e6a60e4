"""The run control's debug stop and -S prelaunch hold, with threads playing the vCPU loop (no KVM)."""

import threading
import time

from pyvmm.control import RunControl


class FakeVcpu:
    """A thread that 'runs the guest' in small slices and parks whenever the run control holds it."""

    def __init__(self, control: RunControl, index: int) -> None:
        self.control = control
        self.index = index
        self.paused = threading.Event()
        self.ran = 0
        self._kicked = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        ctl = self.control
        if ctl.hold_requested:
            ctl.park(self)
        while not ctl.stop_requested:
            self._kicked.wait(0.002)          # KVM_RUN until a kick
            self._kicked.clear()
            if ctl.hold_requested:
                ctl.park(self)                 # returns at once for the vCPU allowed to run alone
                if ctl.stop_requested:
                    break
            self.ran += 1

    def kick(self) -> None:
        self._kicked.set()

    def register_dump(self) -> str:
        return ""

    def is_running(self) -> bool:
        return self.thread.is_alive()


def machine(n=2, prelaunch=False):
    ctl = RunControl()
    vcpus = [FakeVcpu(ctl, i) for i in range(n)]
    ctl.vcpus = vcpus
    if prelaunch:
        ctl.hold_prelaunch()
    else:
        ctl.state = "running"
    for v in vcpus:
        v.thread.start()
    return ctl, vcpus


def all_parked(vcpus, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(v.paused.is_set() for v in vcpus):
            return True
        time.sleep(0.005)
    return False


def progress(v, wait=0.05):
    before = v.ran
    time.sleep(wait)
    return v.ran - before


def test_a_debug_stop_holds_every_vcpu_and_the_first_wins():
    ctl, vcpus = machine()
    events = []
    ctl.add_listener(lambda e, d: events.append(e))
    try:
        assert ctl.debug_stop()
        assert not ctl.debug_stop()           # already stopped: the first stop wins
        assert ctl.state == "debug" and ctl.debug_stopped
        assert all_parked(vcpus)
        assert progress(vcpus[0]) == 0 and progress(vcpus[1]) == 0
        assert events == ["STOP"]
        assert not ctl.pause()                 # a user's pause of a stopped machine is nothing
        assert ctl.resume()
        assert ctl.state == "running" and progress(vcpus[0]) > 0
        assert events == ["STOP", "RESUME"]
    finally:
        ctl.stop()


def test_one_vcpu_runs_while_the_others_stay_stopped():
    ctl, vcpus = machine()
    try:
        ctl.debug_stop()
        assert all_parked(vcpus)
        ctl.resume(only=1)
        assert progress(vcpus[1]) > 0 and progress(vcpus[0]) == 0
        assert not ctl.debug_stopped
        assert ctl.debug_stop()                # that vCPU's step (say) stops it too
        assert all_parked(vcpus) and progress(vcpus[1]) == 0
    finally:
        ctl.stop()


def test_prelaunch_holds_until_the_first_resume():
    ctl, vcpus = machine(prelaunch=True)
    try:
        assert ctl.state == "created" and all_parked(vcpus)
        assert progress(vcpus[0]) == 0
        assert ctl.debug_stop()                # gdb attaches to a machine that never ran
        assert ctl.resume()                    # one continue releases both holds
        assert ctl.state == "running" and progress(vcpus[0]) > 0
    finally:
        ctl.stop()


def test_the_debugger_may_keep_the_machine_stopped_at_resume():
    ctl, vcpus = machine()

    class Debug:
        verdict = False
        calls = 0

        def before_resume(self):
            self.calls += 1
            return self.verdict

    ctl.debug = Debug()
    try:
        ctl.debug_stop()
        assert not ctl.resume()                # the device's reaction hit a breakpoint
        assert ctl.state == "debug" and all_parked(vcpus)
        ctl.debug.verdict = True
        assert ctl.resume() and ctl.debug.calls == 2
    finally:
        ctl.stop()


def test_debug_exits_without_a_debugger_are_a_crash():
    ctl, vcpus = machine(1)
    ctl.report_crashes = False
    try:
        ctl.debug_exit(vcpus[0], "DebugExit(...)")
        assert ctl.stop_requested and "unexpected KVM_EXIT_DEBUG" in ctl.stop_reason
        assert not ctl.breakpoint_hit(vcpus[0], 0x1000)
    finally:
        ctl.stop()
