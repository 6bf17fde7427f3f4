"""Run untrusted, model-written Python code in a bubblewrap sandbox.

Used by code rewards: each completion's code is run against unit tests and the reward is the
fraction of tests passed (:func:`run_tests`).  Every execution gets a fresh sandbox built with
`bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``):

* **Namespaces** - new mount, pid, network, ipc and uts namespaces (no network at all: the
  loopback device inside is a separate, empty network namespace), ``--new-session`` and
  ``--die-with-parent``.  When the pid-1 of the sandbox dies the kernel kills every process in
  the pid namespace, so nothing can outlive a run.
* **Filesystem** - an empty root made read-only at the end, with read-only binds of only what
  the interpreter needs: ``/usr`` (plus ``/bin``, ``/lib``, ``/lib64`` as on the host) and the
  interpreter's installation prefix (``sys.base_prefix``; not the venv's site-packages, not the
  home or project directory), and read-only copies of the two programs that run inside
  (``programs/bootstrap.py`` and ``programs/plain_data.py``, in ``/groupwise``).  The only
  writable place is a private tmpfs at ``/tmp`` (the working directory, size-capped) and a
  small tmpfs at ``/dev/shm``.  ``/proc`` is the sandbox's own, ``/dev`` holds only
  null/zero/full/random/urandom/tty.
* **Environment** - ``--clearenv`` then only ``PATH``, ``HOME=/tmp``, ``LANG`` and
  ``PYTHONDONTWRITEBYTECODE=1``; the interpreter also runs with ``-I -B``.
* **Limits** (:class:`SandboxLimits`, :mod:`groupwise.sandbox.limits`) - ``RLIMIT_CPU``,
  ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` and ``RLIMIT_CORE=0``, the tmpfs size, an
  output cap (at most ``max_output_bytes`` read from stdout and from stderr, then the sandbox
  is killed) and a wall-clock timeout (the whole process group is killed with ``os.killpg``).

How the limits are set: a small trusted *bootstrap* (``programs/bootstrap.py``) is the program
bwrap starts.  It reads the job from an inherited memfd, sets the rlimits, raises its
``oom_score_adj`` to 1000 (so under memory pressure the kernel kills sandboxed code, not the
trainer), drops privileges if needed and only then compiles and executes the untrusted code in
the same interpreter.  This is a prlimit-style wrapper that lives *inside* the sandbox instead
of a ``preexec_fn``: ``preexec_fn`` is documented as unsafe when the parent has threads (the
trainer has many, and :meth:`Sandbox.run_many` uses a thread pool), and it would also limit
bwrap itself.

Fork bombs: ``RLIMIT_NPROC`` counts processes per *real uid* and is never enforced for uid 0,
so the untrusted code must not run as host root.  Two modes, chosen automatically by probing
(:mod:`groupwise.sandbox.launcher` builds the command line, :mod:`groupwise.sandbox.box` probes):

* ``privileged`` (the parent is root): bwrap runs as real root *without* a user namespace, keeps
  only ``CAP_SETUID``/``CAP_SETGID`` for the bootstrap (``no_new_privs`` is set by bwrap), and
  the bootstrap switches to an unused host uid from a per-process pool (one uid per concurrent
  run, so a fork bomb cannot eat the process budget of a neighbouring run) before running the
  code.  (A user namespace would map the sandbox user to host root, where ``RLIMIT_NPROC`` is
  not enforced.)
* ``userns`` (the parent is not root, or root where the privileged mode fails): bwrap creates a
  user namespace (``--unshare-all --unshare-user --disable-userns``) and the code runs as uid
  65534 inside; the kernel counts ``RLIMIT_NPROC`` per (user namespace, uid), so the limit
  applies to the sandbox alone.  A root parent starts bwrap itself as a pool uid (Popen's
  ``user=``/``group=``, no ``preexec_fn``) so that the sandbox user does not map to host root;
  that needs the interpreter prefix to be reachable by that uid.

The verdict of :func:`run_tests` (:mod:`groupwise.sandbox.judging`) is not computed next to
the untrusted code. In the sandbox the bootstrap runs the setup and the solution, then only
*serves calls* on a socket: a JSON line ``name(*args, **kwargs)`` in, its result as plain data
(:mod:`groupwise.sandbox.programs.plain_data`) or the name of its exception out. The tests run
in a separate trusted judge process (:mod:`groupwise.sandbox.programs.judge`, ``python -I -S
-B``, outside the sandbox's namespaces), which holds the only result channel (its stdout, read
by the parent). Nothing the solution does from inside
(walking frames, ``gc``, ``/proc/self/mem``, inherited fds, exiting, killing, patching
builtins, printing markers, returning objects whose ``__eq__`` lies) reaches the judge.

Memory: ``RLIMIT_AS`` bounds each process. Where a memory cgroup can be made (root with a
writable cgroup v2 memory controller or v1 memory hierarchy; :mod:`groupwise.sandbox.cgroup`),
each privileged-mode run gets its own, limited to ``memory_mb`` for all its processes together,
tmpfs pages included; a run that hits it is killed (``killed_reason="memory_limit"``).
Elsewhere the bound is ``max_processes * memory_mb`` plus the tmpfs caps, and the raised
``oom_score_adj`` makes sandboxed processes the OOM killer's first choice. A seccomp filter
(bwrap ``--seccomp``, :func:`seccomp_filter`) refuses ``memfd_create``/``memfd_secret``
(memory no rlimit counts) and the kernel keyring calls (``add_key``, ``request_key``,
``keyctl``: keyrings are not separated by namespaces, so one run could leave a key for a later
run under a reused uid) with ``EPERM``.

``Sandbox(unsafe=True)`` runs the same bootstrap (same rlimits and timeouts) directly, without
namespaces or filesystem isolation; as root ``RLIMIT_NPROC`` is then not enforced and code that
calls ``setsid()`` can escape the process-group kill.  Use it only for trusted code or tests.

Layout: :mod:`~groupwise.sandbox.limits` (limits, rlimits, seccomp),
:mod:`~groupwise.sandbox.launcher` (bwrap command line, uid pool, the programs copied in),
:mod:`~groupwise.sandbox.runner` (one execution: fds, output, kill),
:mod:`~groupwise.sandbox.box` (:class:`Sandbox`: probing a mode),
:mod:`~groupwise.sandbox.judging` (:func:`run_tests`), :mod:`~groupwise.sandbox.cgroup` (memory
cgroups) and ``programs/``: ``bootstrap.py``, ``judge.py`` and ``plain_data.py``, standalone
standard-library programs run as they are.
"""

from groupwise.sandbox.box import Sandbox
from groupwise.sandbox.judging import TestReport, run_tests, run_tests_detailed
from groupwise.sandbox.launcher import SandboxUnavailableError
from groupwise.sandbox.limits import SandboxLimits, seccomp_filter
from groupwise.sandbox.runner import ExecResult

__all__ = [
    "ExecResult",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailableError",
    "TestReport",
    "run_tests",
    "run_tests_detailed",
    "seccomp_filter",
]
