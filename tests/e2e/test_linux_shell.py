"""The minimal Linux with a user space: `pyvmm run --linux` in a terminal, busybox's shell on ttyS0,
reached through the syscall route of linux/patches/0003 on a kvm_pvm host.

Every test here shares ONE boot (the module's `shell` fixture, several minutes on this host): the CLI
runs in a pseudo-terminal driven by pexpect, so what is typed reaches the guest through pyvmm's 16550
exactly as a user's keys do, and Ctrl-A c on the same terminal reaches pyvmm's monitor.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.support.guest import MiB
from tests.support.linux_shell import PROMPT, boot_shell, meminfo, vmstat

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

RAM = 256 * MiB
DEVICE = "virtio-balloon-device,deflate-on-oom=on,free-page-reporting=on"
REPORTING_SETTLED = 30.0   # seconds without a fall of the RSS after which reporting is taken as done


@pytest.fixture(scope="module")
def shell():
    with boot_shell(DEVICE, ram_mib=RAM // MiB, stats_interval=2) as sh:
        yield sh


@pytest.fixture(autouse=True)
def _back_at_the_prompt(request, shell):
    """A test that fails half-way (memhog still holding memory, the balloon down) must not take the
    tests after it with it: they share this boot."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shell.recover(RAM // MiB)


def test_shell_prompt_arithmetic_meminfo_and_virtio_devices(shell):
    """`pyvmm run --linux` reaches busybox's prompt; what is typed runs; /proc and /sys are mounted."""
    assert shell.run("echo $((6*7))") == "42"
    info = meminfo(shell.run("cat /proc/meminfo"))
    assert 200 * MiB < info["MemTotal"] <= RAM, info
    assert 0 < info["MemFree"] < info["MemTotal"] and "MemAvailable" in info
    assert shell.run("ls /sys/bus/virtio/devices").split() == ["virtio0"]
    assert shell.run("cat /sys/bus/virtio/devices/virtio0/device") == "0x0005"   # the balloon


def free_mib(text: str) -> tuple[int, int, int]:
    """`free -m`'s Mem: line -> (total, used, free)."""
    m = re.search(r"^Mem:\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3])


def monitor(shell, line: str, expect: str) -> str:
    """One line typed at the (pyvmm) monitor; the text up to `expect` (a regex)."""
    shell.type(line + "\r")
    shell.child.expect(expect, timeout=300)
    got = shell.child.before + shell.child.after
    shell.child.expect_exact("(pyvmm) ")
    return got


def test_ctrl_a_c_monitor_balloon_and_free_in_the_guest(shell):
    """The session docs/linux.md shows: `free -m`, Ctrl-A c, `balloon 224` at the monitor, back with
    Ctrl-A c, `free -m` again, the features Linux's driver accepted, `info balloon`.  With
    DEFLATE_ON_OOM Linux keeps ballooned pages in MemTotal (it may take them back), so the 32 MiB show
    as used, not as a smaller total."""
    total, used, free = free_mib(shell.run("free -m"))
    shell.child.send("\x01c")
    shell.child.expect_exact("(pyvmm) ")
    monitor(shell, "info balloon", r"balloon: actual=256\r\n")
    shell.type("balloon 224\r")
    shell.child.expect_exact("(pyvmm) ")
    deadline = time.monotonic() + 300
    while "actual=224" not in monitor(shell, "info balloon", r"balloon: actual=\d+"):
        assert time.monotonic() < deadline
        time.sleep(2)
    shell.child.send("\x01c")
    total2, used2, free2 = free_mib(shell.run("free -m"))
    assert total2 == total and used2 - used >= 30 and free - free2 >= 30, (total, used, free, used2, free2)
    features = shell.run("cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    # One character per feature bit, bit 0 first: STATS_VQ (1), DEFLATE_ON_OOM (2), PAGE_REPORTING (5),
    # VERSION_1 (32), the ones this device offers and Linux's driver takes.
    assert re.fullmatch(r"[01]{64}", features), features
    assert [features[b] for b in (1, 2, 5, 32)] == ["1"] * 4, features
    shell.child.send("\x01c")
    shell.child.expect_exact("(pyvmm) ")
    monitor(shell, "info balloon", r"balloon: actual=224")
    shell.type("balloon 256\r")
    shell.child.expect_exact("(pyvmm) ")
    while "actual=256" not in monitor(shell, "info balloon", r"balloon: actual=\d+"):
        assert time.monotonic() < deadline + 300
        time.sleep(2)
    shell.child.send("\x01c")
    assert shell.run("echo back in $((2+3))") == "back in 5"


# (what it exercises, command line, regex its whole output must match).  Each runs in the shell on
# ttyS0, so every one of these system calls takes the route of linux/patches/0003 on a kvm_pvm host.
SYSCALLS: list[tuple[str, str, str]] = [
    # files
    ("open, write, read, close", "echo pyvmm > /tmp/a && cat /tmp/a", "pyvmm"),
    ("O_APPEND", "echo two >> /tmp/a && wc -l < /tmp/a", "2"),
    ("lseek, read", "printf 0123456789 > /tmp/d && dd if=/tmp/d bs=1 skip=7 count=3 2>/dev/null", "789"),
    ("lseek, write in place", "printf XY | dd of=/tmp/d bs=1 seek=2 conv=notrunc 2>/dev/null; cat /tmp/d",
     "01XY456789"),
    ("stat", "stat -c '%s %F' /tmp/d", "10 regular file"),
    ("mkdir, getdents64", "mkdir -p /tmp/dir/sub && ls -1 /tmp/dir", "sub"),
    ("rename", "mv /tmp/a /tmp/dir/b && ls -1 /tmp/dir", "b\nsub"),
    ("rmdir", "rmdir /tmp/dir/sub && ls -1 /tmp/dir", "b"),
    ("symlink, readlink", "ln -s /tmp/d /tmp/l && readlink /tmp/l", "/tmp/d"),
    ("link", "ln /tmp/d /tmp/h && stat -c %h /tmp/d", "2"),
    ("unlink", "unlink /tmp/h && stat -c %h /tmp/d", "1"),
    ("chmod", "chmod 640 /tmp/d && stat -c %a /tmp/d", "640"),
    ("chown", "chown 12:34 /tmp/d && stat -c %u:%g /tmp/d", "12:34"),
    ("utimensat", "touch -d '2001-02-03 04:05:06' /tmp/d && stat -c %Y /tmp/d", "981173106"),
    ("truncate", "truncate -s 3 /tmp/d && cat /tmp/d", "01X"),
    ("fallocate", "fallocate -l 8192 /tmp/fa && stat -c %s /tmp/fa", "8192"),
    ("mknod (FIFO), open blocking on it", "mkfifo /tmp/p && (echo through-fifo > /tmp/p &) && cat /tmp/p",
     "through-fifo"),
    ("statfs", "stat -f -c %T /", "(tmpfs|ramfs)"),
    ("chdir, getcwd", "(cd /tmp/dir && pwd)", "/tmp/dir"),
    ("sync", "sync && echo synced", "synced"),
    ("dup2 (2>&1)", "ls /nonexistent 2>&1 | grep -c 'No such file'", "1"),
    ("copy (read/write or sendfile)", "cp /tmp/d /tmp/c && cmp /tmp/d /tmp/c && echo same", "same"),
    ("mount, umount2", "mkdir -p /mnt && mount -t tmpfs -o size=1m none /mnt && grep -c ' /mnt tmpfs' "
     "/proc/mounts && umount /mnt && echo unmounted", "1\nunmounted"),
    ("execve of a #! script", "printf '#!/bin/sh\\necho script-ran\\n' > /tmp/s && chmod +x /tmp/s && /tmp/s",
     "script-ran"),
    # processes
    ("fork, execve, exit_group, wait4", "sh -c 'exit 7'; echo $?", "7"),
    ("getpid, getppid", "[ \"$(sh -c 'echo $PPID')\" = \"$$\" ] && echo ppid-ok", "ppid-ok"),
    ("pipe", "echo through-a-pipe | cat", "through-a-pipe"),
    ("kill, rt_sigaction, rt_sigreturn", "sh -c 'trap \"echo got-usr1\" USR1; kill -USR1 $$; echo after'",
     "got-usr1\nafter"),
    ("kill, wait4's status", "sh -c 'kill -TERM $$'; echo $?", "(Terminated\n)?143"),
    ("setpriority, getpriority", "sh -c 'renice -n 5 -p $$ >/dev/null; cut -d\" \" -f19 /proc/$$/stat'", "5"),
    ("sched_setaffinity, sched_getaffinity", "taskset -c 0 nproc", "1"),
    ("ioprio_set (ENOSYS: this kernel has no block layer)", "ionice -c 3 true",
     "ionice: ioprio_set: Function not implemented"),
    ("prlimit64", "sh -c 'ulimit -n 77; ulimit -n'", "77"),
    ("umask", "(umask 027; touch /tmp/um; stat -c %a /tmp/um)", "640"),
    ("uname", "uname -sm", "Linux x86_64"),
    ("sethostname", "hostname pyvmm-guest && hostname", "pyvmm-guest"),
    ("getuid, getgid", "id -u; id -g", "0\n0"),
    ("prctl(PR_SET_NO_NEW_PRIVS)", "setpriv --nnp grep NoNewPrivs /proc/self/status", r"NoNewPrivs:\s+1"),
    ("/proc/self", "cat /proc/self/comm", "cat"),
    # memory
    ("mmap, munmap (memhog)", "memhog a 8 f q", "(?s).*holding 8 MiB.*freed 8 MiB.*bye"),
    ("brk (awk's malloc)", "awk 'BEGIN { for (i = 0; i < 20000; i++) s = s \"x\"; print length(s) }'", "20000"),
    ("sysinfo", "free | grep -c Mem:", "1"),
    # time
    ("clock_gettime", "date +%Y", r"\d{4}"),
    ("clock_settime", "date -s '2030-01-02 03:04:05' >/dev/null && date +%Y-%m-%d", "2030-01-02"),
    ("nanosleep", "usleep 100000 && echo slept", "slept"),
    ("wait4's rusage (time)", "time true 2>&1", r"(?s).*real.*"),
    ("alarm-style timeout (timeout)", "timeout 1 sleep 10; echo $?", "(Terminated\n)?(124|143)"),
    ("adjtimex", "adjtimex", r"(?s).*mode.*"),
    ("/proc/sys (sysctl)", "sysctl -n kernel.ostype", "Linux"),
]


def test_a_few_dozen_system_calls_through_busybox(shell, figure):
    """File, process, memory and time system calls, each seen to do its job (not merely return)."""
    failed, crashed = [], []
    for what, command, want in SYSCALLS:
        out = shell.run(command)
        segv = [k for k in shell.kernel if "segfault at" in k]
        if segv:
            # A user process of this guest occasionally dies reading a zero where its own data should be
            # (seen about once per hundred processes on this kvm_pvm host, cause not found yet; issue
            # 18's note). Such a run is counted and shown, and the command runs once more.
            crashed.append(f"{what}: {segv[0]}")
            out = shell.run(command)
        if not re.fullmatch(want, out):
            failed.append(f"{what}: `{command}` printed {out!r}, expected /{want}/")
    figure(f"{len(SYSCALLS)} system-call checks; user-space crashes retried: {len(crashed)} {crashed}")
    assert not failed, "\n".join(failed)
    assert len(crashed) <= 2, crashed
    assert len(SYSCALLS) >= 40


def test_system_call_rate(shell, figure):
    """The cost of the route: getppid() in a loop (linux/sysrate.c); the figure goes to the note."""
    out = shell.run("sysrate 20000")
    m = re.fullmatch(r"sysrate: 20000 getppid calls in (\d+) us: (\d+) per second, (\d+) ns each", out)
    assert m, out
    figure(f"system calls in the guest: {m[2]} per second ({m[3]} ns each)")
    assert int(m[2]) > 0


def test_guest_stats_agree_with_proc_meminfo_and_vmstat(shell, figure):
    """Linux's stats (every 2 s here) against /proc/meminfo and /proc/vmstat read just before and just
    after the stats sample: each stat lies between the two reads, give or take the reader's own pages."""
    text1 = shell.run("cat /proc/meminfo /proc/vmstat")
    read1 = time.time()
    deadline = time.monotonic() + 60
    while shell.qom("guest-stats")["last-update"] < int(read1) + 1:   # a sample taken after read 1
        assert time.monotonic() < deadline, "no stats update within 60 s"
        time.sleep(0.2)
    stats = shell.qom("guest-stats")["stats"]
    text2 = shell.run("cat /proc/meminfo /proc/vmstat")
    m1, m2 = meminfo(text1), meminfo(text2)
    v1, v2 = vmstat(text1), vmstat(text2)

    def caches(m):   # the driver's NR_FILE_PAGES is meminfo's Cached + Buffers + SwapCached
        return m["Cached"] + m["Buffers"] + m["SwapCached"]

    reader = 1 * MiB   # what `cat` itself holds while it reads (its pages, page tables, stack)
    pairs = {
        "stat-free-memory": (m1["MemFree"], m2["MemFree"], reader),
        "stat-available-memory": (m1["MemAvailable"], m2["MemAvailable"], reader),
        "stat-total-memory": (m1["MemTotal"], m2["MemTotal"], 0),
        "stat-disk-caches": (caches(m1), caches(m2), 256 * 1024),
        "stat-minor-faults": (v1["pgfault"], v2["pgfault"], 0),
        "stat-major-faults": (v1["pgmajfault"], v2["pgmajfault"], 0),
        "stat-swap-in": (v1["pswpin"] * 4096, v2["pswpin"] * 4096, 0),
        "stat-swap-out": (v1["pswpout"] * 4096, v2["pswpout"] * 4096, 0),
    }
    report, wrong = [], []
    for name, (a, b, slack) in pairs.items():
        lo, hi = min(a, b) - slack, max(a, b) + slack
        report.append(f"{name} {stats[name]} (reads {a}, {b})")
        if not lo <= stats[name] <= hi:
            wrong.append(f"{name}={stats[name]} outside [{lo}, {hi}]")
    figure("guest stats vs /proc: " + "; ".join(report))
    assert not wrong, wrong
    assert v2["pgfault"] > v1["pgfault"]   # the counters are live, not a copy taken once


def test_free_page_reporting_gives_freed_memory_back_to_the_host(shell, figure):
    """memhog holds 128 MiB, then frees it: Linux reports the free pages and the host RSS of guest RAM
    (mincore) falls, with no balloon target change.  Linux reports only free blocks of at least
    pageblock order (2 MiB), a budget of them per pass, a pass 2 s after the last: the RSS falls in
    steps, so the test waits until 90% is back (issue 18's figure) or the RSS has not fallen for
    REPORTING_SETTLED seconds, and prints what came back.  80% is asserted: what stays in free
    blocks below 2 MiB is Linux's to keep, not the device's."""
    size = 128 * MiB
    target, actual = shell.qom("target"), shell.qom("actual")
    shell.drain_events()
    shell.type("memhog\r")
    shell.expect(r"memhog: ready")
    shell.type(f"a {size // MiB}\r")
    shell.expect(rf"memhog: holding {size // MiB} MiB", timeout=900)   # each page's fault is emulated
    time.sleep(3)   # reporting runs 2 s after pages go free: let what was free before settle first
    held = shell.qom("guest-ram-rss")
    discarded0 = shell.qom("discarded-bytes")
    shell.type("f\r")
    shell.expect(rf"memhog: freed {size // MiB} MiB")
    t0 = last_fall = time.monotonic()
    rss = held
    while held - rss < 0.9 * size and time.monotonic() - last_fall < REPORTING_SETTLED \
            and time.monotonic() - t0 < 300:
        time.sleep(1)
        now = shell.qom("guest-ram-rss")
        if now < rss:
            rss, last_fall = now, time.monotonic()
    took = last_fall - t0
    shell.type("q\r")
    shell.expect(r"memhog: bye")
    shell.child.expect_exact(PROMPT)
    figure(f"free page reporting: host RSS of guest RAM {held / MiB:.1f} -> {rss / MiB:.1f} MiB "
          f"({(held - rss) / MiB:.1f} of {size // MiB} MiB freed in the guest, {(held - rss) / size:.0%}), "
          f"the last fall {took:.1f} s after the free; "
          f"device discarded {(shell.qom('discarded-bytes') - discarded0) / MiB:.1f} MiB")
    assert held - rss >= 0.8 * size, (held, rss)
    assert (shell.qom("target"), shell.qom("actual")) == (target, actual)
    assert shell.drain_events() == []


def test_deflate_on_oom_lets_the_program_survive(shell, figure):
    """Ballooned down to 96 MiB, memhog asks for all 96: more than is left beside the kernel and the
    shell, so with DEFLATE_ON_OOM Linux's OOM notifier takes pages back from the balloon, 1 MiB per
    call (`actual` rises, BALLOON_CHANGE events) and memhog gets all it asked for.  Each of those calls
    is a whole OOM pass of emulated kernel code here, so the shortfall is kept small: asking 128 MiB
    took 54 of them (actual 96 -> 150 MiB) and most of the test's 6 to 12 minutes."""
    took = shell.balloon_to(96)
    shell.drain_events()
    out = shell.run("memhog a 96 s q", timeout=900)
    assert "memhog: holding 96 MiB" in out and "memhog: bye" in out, out
    actual = shell.qmp_exec("query-balloon")["actual"]
    events = shell.drain_events()
    kills = len(re.findall(r"Killed process \d+", "\n".join(shell.kernel)))   # the kernel's, on this console
    figure(f"deflate on OOM: inflate 256 -> 96 MiB in {took:.1f} s; after memhog took 96 MiB "
          f"actual = {actual / MiB:.0f} MiB, {len(events)} BALLOON_CHANGE events, OOM kills: {kills}")
    assert actual > 96 * MiB
    assert events and events[-1]["data"]["actual"] == actual
    assert kills == 0, out
    shell.balloon_to(256)


# Not strict: the crash is frequent but not certain (4 of the 21 boots on record, none of the last 12), and a
# boot where the pipeline comes out right shows as XPASS.  raises=AssertionError: only the wrong answer is the
# known defect; a boot that fails, or a shell that stops answering, is an error of its own.
@pytest.mark.xfail(strict=False, raises=AssertionError,
                   reason="open defect (issue 18): at the end of this module (after inflates, reporting and a "
                   "deflate on OOM) a pipeline fed by `seq 1 1000` has a stage segfault (sort, or busybox "
                   "re-exec'd as exe) in 4 of the 21 boots on record; right after a plain boot it passes "
                   "(bench/linux_cycle.py --probe-only)")
def test_sort_in_a_pipeline(shell):
    assert shell.run("seq 1 1000 | sort -n -r | head -1") == "1000"
