# awaitlet-gdb.py -- list awaitlet's live tasks, with backtraces, from gdb.
#
# gdb only knows the stacks threads are running on; a suspended task's stack
# is invisible to it.  libawaitlet keeps every live task on a list
# (awaitlet__all_tasks); this script walks it and, for a suspended task,
# briefly points the selected thread's registers at the task's saved context
# (the frame awaitlet__switch leaves on the task's stack, see
# lib/switch_x86_64.S and lib/switch_aarch64.S) to print its backtrace, then
# puts them back.  That needs a live process, not a core file.
#
#   (gdb) source script/awaitlet-gdb.py
#   (gdb) awaitlet tasks        -- one line per task
#   (gdb) awaitlet bt           -- the same, with each suspended task's backtrace
import gdb

STATES = {0: "new", 1: "running", 2: "suspended", 3: "done"}
WAITS = {0: "-", 1: "io", 2: "sleep", 3: "join", 4: "ready", 5: "offload", 6: "job"}


def _tasks():
    try:
        t = gdb.parse_and_eval("awaitlet__all_tasks")
    except gdb.error:
        raise gdb.GdbError("awaitlet__all_tasks not found: is libawaitlet loaded, with debug info?")
    while int(t) != 0:
        yield t
        t = t["all_next"]


def _describe(t):
    name = t["name"]
    name = name.string() if int(name) != 0 else ""
    fn = gdb.parse_and_eval("(void *)%d" % int(t["fn"]))
    state = STATES.get(int(t["state"]), "?")
    wait = WAITS.get(int(t["wait"]), "?")
    extra = ""
    if int(t["wait"]) == 1:
        extra = " fd=%d" % int(t["io"]["fd"])
    return "task #%d %s state=%s wait=%s%s fn=%s stack=%d" % (
        int(t["id"]), ('"%s"' % name) if name else "", state, wait, extra,
        str(fn), int(t["stack"]["size"]) if int(t["stack"]) else 0)


def _saved_regs(t):
    arch = gdb.selected_frame().architecture().name()
    u64 = gdb.lookup_type("unsigned long").pointer()
    try:
        sp = int(t["ctx"]["sp"])
    except gdb.error:
        return None  # ucontext build: not supported
    mem = lambda off: int(gdb.Value(sp + off).cast(u64).dereference())
    if "x86-64" in arch:
        return {"$rsp": sp + 64, "$rip": mem(56), "$rbp": mem(48), "$rbx": mem(40),
                "$r12": mem(32), "$r13": mem(24), "$r14": mem(16), "$r15": mem(8)}
    if "aarch64" in arch:
        # frame: x19..x28 at 0..72, x29 at 80, x30 at 88, d8..d15, FPCR; 176 bytes
        regs = {"$sp": sp + 176, "$pc": mem(88), "$x29": mem(80), "$x30": mem(88)}
        for i in range(19, 29):
            regs["$x%d" % i] = mem((i - 19) * 8)
        return regs
    return None


class AwaitletCmd(gdb.Command):
    """awaitlet tasks | awaitlet bt: list live awaitlet tasks (bt: with backtraces)."""

    def __init__(self):
        super().__init__("awaitlet", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        arg = arg.strip() or "tasks"
        if arg not in ("tasks", "bt"):
            raise gdb.GdbError("usage: awaitlet tasks | awaitlet bt")
        n = 0
        for t in _tasks():
            n += 1
            gdb.write(_describe(t) + "\n")
            if arg == "bt" and int(t["state"]) == 2:
                self._backtrace(t)
        gdb.write("%d live task(s)\n" % n)

    def _backtrace(self, t):
        regs = _saved_regs(t)
        if regs is None:
            gdb.write("  (backtrace needs the assembly context switch)\n")
            return
        gdb.execute("select-frame 0", to_string=True)
        saved = {r: int(gdb.parse_and_eval(r)) for r in regs}
        try:
            for r, v in regs.items():
                gdb.execute("set %s = %d" % (r, v), to_string=True)
            out = gdb.execute("bt", to_string=True)
            gdb.write("".join("  " + line + "\n" for line in out.splitlines()))
        finally:
            for r, v in saved.items():
                gdb.execute("set %s = %d" % (r, v), to_string=True)


AwaitletCmd()
