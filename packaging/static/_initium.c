/*
 * _initium: the system calls PID 1 needs and the os module lacks.
 *
 * A static interpreter has no dynamic symbol table, so ctypes cannot find
 * libc's functions in it; these typed wrappers replace that path.  Each
 * function releases the GIL around its call and raises OSError(errno,
 * strerror, filename) like the os functions, so callers handle both paths
 * the same way (initium.syscalls picks this module when it is importable).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* ioctl structures are small; the bound keeps a bad length from a caller
 * from becoming a large allocation in PID 1. */
#define MAX_IOCTL_BUFFER 65536

/* O& converter: None -> NULL, str/bytes/PathLike -> bytes (fs encoding). */
static int
optional_path(PyObject *obj, void *out)
{
    PyObject **result = (PyObject **)out;
    if (obj == NULL) { /* cleanup call from PyArg_Parse* on failure */
        Py_CLEAR(*result);
        return 1;
    }
    if (obj == Py_None) {
        *result = NULL;
        return 1;
    }
    if (!PyUnicode_FSConverter(obj, result))
        return 0;
    return Py_CLEANUP_SUPPORTED;
}

static const char *
bytes_or_null(PyObject *b)
{
    return b == NULL ? NULL : PyBytes_AS_STRING(b);
}

/* Raise OSError from errno, naming the path the way os does (the original object). */
static PyObject *
raise_errno(PyObject *filename, PyObject *filename2)
{
    PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, filename, filename2);
    return NULL;
}

static PyObject *
initium_mount(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"source", "target", "fstype", "flags", "data", NULL};
    PyObject *source = NULL, *target = NULL, *fstype = NULL, *data = NULL;
    PyObject *target_obj = NULL;
    unsigned long flags = 0;
    int rc, saved;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O|O&kO&:mount", keywords,
                                     optional_path, &source, &target_obj,
                                     optional_path, &fstype, &flags,
                                     optional_path, &data))
        return NULL;
    if (!PyUnicode_FSConverter(target_obj, &target))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = mount(bytes_or_null(source), PyBytes_AS_STRING(target), bytes_or_null(fstype),
               flags, bytes_or_null(data));
    Py_END_ALLOW_THREADS
    saved = errno;
    Py_XDECREF(source);
    Py_XDECREF(target);
    Py_XDECREF(fstype);
    Py_XDECREF(data);
    if (rc < 0) {
        errno = saved;
        return raise_errno(target_obj, NULL);
    }
    Py_RETURN_NONE;
fail:
    Py_XDECREF(source);
    Py_XDECREF(fstype);
    Py_XDECREF(data);
    return NULL;
}

static PyObject *
initium_umount2(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"target", "flags", NULL};
    PyObject *target_obj, *target = NULL;
    int flags = 0, rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|i:umount2", keywords, &target_obj, &flags))
        return NULL;
    if (!PyUnicode_FSConverter(target_obj, &target))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = umount2(PyBytes_AS_STRING(target), flags);
    Py_END_ALLOW_THREADS
    Py_DECREF(target);
    if (rc < 0)
        return raise_errno(target_obj, NULL);
    Py_RETURN_NONE;
}

static PyObject *
initium_reboot(PyObject *self, PyObject *args)
{
    unsigned int cmd;
    int rc;

    /* I: the LINUX_REBOOT_CMD_* values do not fit a signed int. */
    if (!PyArg_ParseTuple(args, "I:reboot", &cmd))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = reboot((int)cmd);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_errno(NULL, NULL);
    Py_RETURN_NONE;
}

static PyObject *
initium_statfs_type(PyObject *self, PyObject *args)
{
    PyObject *path_obj, *path = NULL;
    struct statfs st;
    int rc;

    if (!PyArg_ParseTuple(args, "O:statfs_type", &path_obj))
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = statfs(PyBytes_AS_STRING(path), &st);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (rc < 0)
        return raise_errno(path_obj, NULL);
    /* The magics are 32-bit values; f_type is a signed long on some ABIs. */
    return PyLong_FromUnsignedLong((unsigned long)st.f_type & 0xFFFFFFFFUL);
}

static PyObject *
initium_finit_module(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"fd", "params", "flags", NULL};
    int fd, flags = 0;
    const char *params = "";
    long rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|si:finit_module", keywords,
                                     &fd, &params, &flags))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_finit_module, fd, params, flags);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_errno(NULL, NULL);
    Py_RETURN_NONE;
}

static PyObject *
initium_pivot_root(PyObject *self, PyObject *args)
{
    PyObject *new_obj, *old_obj, *new_root = NULL, *put_old = NULL;
    long rc;

    if (!PyArg_ParseTuple(args, "OO:pivot_root", &new_obj, &old_obj))
        return NULL;
    if (!PyUnicode_FSConverter(new_obj, &new_root))
        return NULL;
    if (!PyUnicode_FSConverter(old_obj, &put_old)) {
        Py_DECREF(new_root);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_pivot_root, PyBytes_AS_STRING(new_root), PyBytes_AS_STRING(put_old));
    Py_END_ALLOW_THREADS
    Py_DECREF(new_root);
    Py_DECREF(put_old);
    if (rc < 0)
        return raise_errno(new_obj, old_obj);
    Py_RETURN_NONE;
}

static PyObject *
initium_add_key(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"type", "description", "payload", "keyring", NULL};
    const char *type, *description;
    Py_buffer payload;
    long keyring;
    long rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ssy*l:add_key", keywords,
                                     &type, &description, &payload, &keyring))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_add_key, type, description, payload.len ? payload.buf : NULL,
                 (size_t)payload.len, (int)keyring);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    if (rc < 0)
        return raise_errno(NULL, NULL);
    return PyLong_FromLong(rc);
}

static PyObject *
initium_keyctl(PyObject *self, PyObject *args)
{
    int cmd;
    long a2 = 0, a3 = 0, a4 = 0, a5 = 0;
    long rc;

    /* Signed longs: the special keyring ids (KEY_SPEC_*) are negative. */
    if (!PyArg_ParseTuple(args, "i|llll:keyctl", &cmd, &a2, &a3, &a4, &a5))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_keyctl, cmd, (unsigned long)a2, (unsigned long)a3,
                 (unsigned long)a4, (unsigned long)a5);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_errno(NULL, NULL);
    return PyLong_FromLong(rc);
}

static PyObject *
initium_ioctl(PyObject *self, PyObject *args)
{
    int fd, rc;
    unsigned long request;
    Py_buffer in;
    PyObject *out;

    if (!PyArg_ParseTuple(args, "iky*:ioctl", &fd, &request, &in))
        return NULL;
    if (in.len > MAX_IOCTL_BUFFER) {
        PyBuffer_Release(&in);
        PyErr_Format(PyExc_ValueError, "ioctl buffer of %zd bytes, over %d", in.len,
                     MAX_IOCTL_BUFFER);
        return NULL;
    }
    /* The kernel writes the structure back: copy into a fresh bytes object
     * that the caller receives, never into the caller's immutable input. */
    out = PyBytes_FromStringAndSize(in.buf, in.len);
    PyBuffer_Release(&in);
    if (out == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = ioctl(fd, request, PyBytes_AS_STRING(out));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(out);
        return raise_errno(NULL, NULL);
    }
    return out;
}

/* --- spawn: posix_spawn plus the prctl calls a child needs --------------
 *
 * posix_spawn cannot run code in the child, and PR_SET_PDEATHSIG, the
 * capability bounding set and no_new_privs must be set there, between fork
 * and exec.  This is the smallest way to do it: vfork (the parent's pages
 * are shared, not copied, as glibc's posix_spawn does), a child that makes
 * only system calls, and errno handed back through the shared memory.
 * Every Python object is converted before the vfork; the child touches none.
 */

#define SPAWN_OPEN 0   /* the values of os.POSIX_SPAWN_OPEN/CLOSE/DUP2 */
#define SPAWN_CLOSE 1
#define SPAWN_DUP2 2
#define SPAWN_MAX_ACTIONS 16
#define SPAWN_MAX_ARGS 4096

struct spawn_action {
    int kind, fd, newfd, flags;
    mode_t mode;
    const char *path;
};

struct spawn_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    struct spawn_action actions[SPAWN_MAX_ACTIONS];
    int n_actions;
    int setsid;
    sigset_t sigdefault;
    sigset_t mask;          /* the parent's mask, restored before exec */
    int pdeathsig;
    pid_t parent;
    int no_new_privs;
    long long keep_caps;    /* bit n = keep capability n; < 0 = leave the set alone */
};

/* Where the child stopped, for the parent's error message. */
static const char *const spawn_steps[] = {
    "", "signals", "setsid", "file action", "PR_SET_PDEATHSIG", "parent gone",
    "capability bounding set", "no_new_privs", "exec",
};

static _Noreturn void
spawn_child(const struct spawn_request *rq, volatile int *err, volatile int *step)
{
    int i;
    long long cap;

    for (i = 1; i < _NSIG; i++) {
        struct sigaction sa;
        /* The parent's handlers are its code in shared memory: never run them here. */
        if (sigaction(i, NULL, &sa) < 0)
            continue;
        if (sigismember(&rq->sigdefault, i) == 1 ||
            (sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL)) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            if (sigaction(i, &sa, NULL) < 0 && errno != EINVAL) {
                *step = 1;
                goto fail;
            }
        }
    }
    if (rq->setsid && setsid() < 0) {
        *step = 2;
        goto fail;
    }
    for (i = 0; i < rq->n_actions; i++) {
        const struct spawn_action *a = &rq->actions[i];
        int fd;
        *step = 3;
        switch (a->kind) {
        case SPAWN_OPEN:
            fd = open(a->path, a->flags, a->mode);
            if (fd < 0)
                goto fail;
            if (fd != a->fd) {
                if (dup2(fd, a->fd) < 0)
                    goto fail;
                close(fd);
            }
            break;
        case SPAWN_CLOSE:
            close(a->fd);
            break;
        default:
            if (dup2(a->fd, a->newfd) < 0)
                goto fail;
        }
    }
    if (rq->pdeathsig) {
        *step = 4;
        if (prctl(PR_SET_PDEATHSIG, rq->pdeathsig, 0, 0, 0) < 0)
            goto fail;
        /* The parent may have died before the prctl: then nobody signals us. */
        if (getppid() != rq->parent) {
            *step = 5;
            errno = ESRCH;
            goto fail;
        }
    }
    if (rq->keep_caps >= 0) {
        *step = 6;
        for (cap = 0; cap < 64; cap++) {
            if (rq->keep_caps & (1LL << cap))
                continue;
            if (prctl(PR_CAPBSET_DROP, (unsigned long)cap, 0, 0, 0) < 0) {
                if (errno == EINVAL)   /* past the kernel's last capability */
                    break;
                goto fail;
            }
        }
        /* Ambient capabilities would survive the exec outside the bounding set's reach. */
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
            goto fail;
    }
    if (rq->no_new_privs) {
        *step = 7;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            goto fail;
    }
    *step = 8;
    sigprocmask(SIG_SETMASK, &rq->mask, NULL);
    execve(rq->path, rq->argv, rq->envp);
fail:
    *err = errno ? errno : EINVAL;
    _exit(127);
}

/* The vfork in a function of its own: the caller's locals are never live
 * across it (the child leaves through exec or _exit, never by returning). */
static pid_t
spawn_vfork(struct spawn_request *rq, volatile int *err, volatile int *step)
{
    sigset_t all;
    pid_t pid;
    int saved;

    /* No signal may reach a handler while parent and child share memory. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &rq->mask);
    pid = vfork();
    if (pid == 0)
        spawn_child(rq, err, step);
    saved = errno;
    sigprocmask(SIG_SETMASK, &rq->mask, NULL);
    errno = saved;
    return pid;
}

/* A NULL-terminated char* array of the fs-encoded strings in ``seq`` (kept in ``keep``). */
static char **
string_array(PyObject *seq, PyObject *keep, const char *what)
{
    Py_ssize_t n, i;
    char **out;
    PyObject *fast = PySequence_Fast(seq, what);

    if (fast == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    if (n > SPAWN_MAX_ARGS) {
        PyErr_Format(PyExc_ValueError, "%s: %zd items, over %d", what, n, SPAWN_MAX_ARGS);
        Py_DECREF(fast);
        return NULL;
    }
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &b) ||
            PyList_Append(keep, b) < 0) {
            Py_XDECREF(b);
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(b);
        Py_DECREF(b);   /* ``keep`` holds it */
    }
    Py_DECREF(fast);
    return out;
}

static int
parse_actions(PyObject *seq, struct spawn_request *rq, PyObject *keep)
{
    Py_ssize_t n, i;
    PyObject *fast = PySequence_Fast(seq, "file_actions must be a sequence");

    if (fast == NULL)
        return -1;
    n = PySequence_Fast_GET_SIZE(fast);
    if (n > SPAWN_MAX_ACTIONS) {
        PyErr_Format(PyExc_ValueError, "%zd file actions, over %d", n, SPAWN_MAX_ACTIONS);
        goto fail;
    }
    for (i = 0; i < n; i++) {
        struct spawn_action *a = &rq->actions[i];
        PyObject *t = PySequence_Fast_GET_ITEM(fast, i), *path_obj, *path = NULL;
        unsigned int mode = 0;
        memset(a, 0, sizeof *a);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 1) {
            PyErr_SetString(PyExc_TypeError, "a file action is a tuple");
            goto fail;
        }
        a->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        if (a->kind == -1 && PyErr_Occurred())
            goto fail;
        if (a->kind == SPAWN_OPEN) {
            if (!PyArg_ParseTuple(t, "iiOiI", &a->kind, &a->fd, &path_obj, &a->flags, &mode))
                goto fail;
            if (!PyUnicode_FSConverter(path_obj, &path))
                goto fail;
            if (PyList_Append(keep, path) < 0) {
                Py_DECREF(path);
                goto fail;
            }
            a->path = PyBytes_AS_STRING(path);
            a->mode = (mode_t)mode;
            Py_DECREF(path);
        } else if (a->kind == SPAWN_CLOSE) {
            if (!PyArg_ParseTuple(t, "ii", &a->kind, &a->fd))
                goto fail;
        } else if (a->kind == SPAWN_DUP2) {
            if (!PyArg_ParseTuple(t, "iii", &a->kind, &a->fd, &a->newfd))
                goto fail;
        } else {
            PyErr_Format(PyExc_ValueError, "unknown file action %d", a->kind);
            goto fail;
        }
    }
    rq->n_actions = (int)n;
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
}

static char **
environment(PyObject *env, PyObject *keep)
{
    char **out = NULL;
    PyObject *items = PyMapping_Items(env), *strings = NULL;
    Py_ssize_t i, n;

    if (items == NULL)
        return NULL;
    n = PyList_GET_SIZE(items);
    strings = PyList_New(n);
    if (strings == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *k = NULL, *v = NULL, *kv;
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "env must map str to str");
            goto done;
        }
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(pair, 0), &k))
            goto done;
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(pair, 1), &v)) {
            Py_DECREF(k);
            goto done;
        }
        if (PyBytes_GET_SIZE(k) == 0 || strchr(PyBytes_AS_STRING(k), '=') != NULL) {
            PyErr_Format(PyExc_ValueError, "illegal environment variable name %R", k);
            Py_DECREF(k);
            Py_DECREF(v);
            goto done;
        }
        kv = PyBytes_FromFormat("%s=%s", PyBytes_AS_STRING(k), PyBytes_AS_STRING(v));
        Py_DECREF(k);
        Py_DECREF(v);
        if (kv == NULL)
            goto done;
        PyList_SET_ITEM(strings, i, kv);
    }
    out = string_array(strings, keep, "env");
done:
    Py_XDECREF(strings);
    Py_DECREF(items);
    return out;
}

static PyObject *
initium_spawn(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", "argv", "env", "file_actions", "setsid", "sigdefault",
                               "pdeathsig", "no_new_privs", "keep_caps", NULL};
    PyObject *path_obj, *path = NULL, *argv_obj, *env_obj, *actions = NULL, *sigdef = NULL;
    PyObject *keep = NULL, *result = NULL;
    struct spawn_request rq;
    char **argv = NULL, **envp = NULL;
    volatile int child_err = 0, child_step = 0;
    pid_t pid;

    memset(&rq, 0, sizeof rq);
    rq.keep_caps = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O$pOipL:spawn", keywords,
                                     &path_obj, &argv_obj, &env_obj, &actions, &rq.setsid,
                                     &sigdef, &rq.pdeathsig, &rq.no_new_privs, &rq.keep_caps))
        return NULL;
    if (rq.pdeathsig < 0 || rq.pdeathsig >= _NSIG) {
        PyErr_Format(PyExc_ValueError, "pdeathsig %d is not a signal", rq.pdeathsig);
        return NULL;
    }
    keep = PyList_New(0);
    if (keep == NULL)
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path))
        goto done;
    if ((argv = string_array(argv_obj, keep, "argv must be a sequence")) == NULL)
        goto done;
    if (argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "argv is empty");
        goto done;
    }
    if ((envp = environment(env_obj, keep)) == NULL)
        goto done;
    if (actions != NULL && parse_actions(actions, &rq, keep) < 0)
        goto done;
    sigemptyset(&rq.sigdefault);
    if (sigdef != NULL) {
        PyObject *fast = PySequence_Fast(sigdef, "sigdefault must be a sequence");
        Py_ssize_t i;
        if (fast == NULL)
            goto done;
        for (i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
            long sig = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
            if (sig <= 0 || sig >= _NSIG) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "%ld is not a signal", sig);
                Py_DECREF(fast);
                goto done;
            }
            sigaddset(&rq.sigdefault, (int)sig);
        }
        Py_DECREF(fast);
    }
    rq.path = PyBytes_AS_STRING(path);
    rq.argv = argv;
    rq.envp = envp;
    rq.parent = getpid();

    pid = spawn_vfork(&rq, &child_err, &child_step);
    if (pid < 0) {
        raise_errno(NULL, NULL);
        goto done;
    }
    if (child_err != 0) {
        /* The child reported before exiting: collect it, then say where it stopped. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (child_step == 8) {
            errno = child_err;
            raise_errno(path_obj, NULL);
        } else {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iN", child_err,
                                                  PyUnicode_FromFormat("%s (%s)",
                                                                       strerror(child_err),
                                                                       spawn_steps[child_step]));
            if (exc != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                Py_DECREF(exc);
            }
        }
        goto done;
    }
    result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(path);
    Py_DECREF(keep);
    return result;
}

/* --- reader_start: a device reader that shares PID 1's memory -------------
 *
 * initium.storage.reader probes disks through a child so that a read stuck
 * in the kernel cannot stall PID 1.  Forking the interpreter for it costs
 * page-table copies and, afterwards, a copy-on-write fault for every page
 * either side writes (the refcounts of every object touched): tens of
 * milliseconds under TCG.  This child is made with clone(CLONE_VM) instead:
 * it runs the loop below on a stack of its own, in memory it alone uses,
 * and makes nothing but raw system calls, because everything else libc
 * offers (errno, locks, malloc) lives in the parent's thread-local or global
 * state.  Signals stay blocked in it (SIGKILL still ends it).  It is its own
 * process, not a thread: one stuck in a read never holds up the parent's
 * execve of the real init.  Its memory is never unmapped: an abandoned
 * child may still be inside pread() writing into its buffer.
 *
 * The protocol is the Python child's (initium.storage.reader): a request is
 * offset (u64), length (u32), path length (u32), path; the reply is frames
 * of an i32 each: n > 0 announces n bytes of data, 0 ends the reply,
 * -errno ends it with an error.  All little-endian.
 */

#if defined(__x86_64__) || defined(__aarch64__)
#define HAVE_READER 1
#include <sched.h>
#include <sys/mman.h>

#define READER_GUARD 4096
#define READER_STACK (60 * 1024)
#define READER_CHUNK (256 * 1024)
#define READER_PATH 4096
#define READER_FDS 32
#define READER_NAME 256

struct reader_area {
    int requests, replies;      /* the child's ends */
    int parent_ends[2];         /* the parent's ends, closed in the child */
    int n_fds;
    int fds[READER_FDS];
    char names[READER_FDS][READER_NAME];
    char path[READER_PATH];
    unsigned char head[16];
    unsigned char buf[4 + READER_CHUNK + 4];
};

/* A system call with no libc in between: returns -errno on failure. */
static long
reader_syscall(long n, long a, long b, long c, long d)
{
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
#else
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
#endif
}

static _Noreturn void
reader_exit(void)
{
    for (;;)
        reader_syscall(SYS_exit, 0, 0, 0, 0);
}

/* 1 when all of buf was read, 0 at the pipe's end or on an error. */
static int
reader_read_full(int fd, unsigned char *buf, unsigned long size)
{
    while (size) {
        long n = reader_syscall(SYS_read, fd, (long)buf, (long)size, 0);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return 0;
        buf += n;
        size -= (unsigned long)n;
    }
    return 1;
}

static void
reader_write_full(int fd, const unsigned char *buf, unsigned long size)
{
    while (size) {
        long n = reader_syscall(SYS_write, fd, (long)buf, (long)size, 0);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            reader_exit();  /* the parent is gone or gave up on us */
        buf += n;
        size -= (unsigned long)n;
    }
}

static void
reader_put32(unsigned char *p, unsigned int v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static unsigned long long
reader_get(const unsigned char *p, int bytes)
{
    unsigned long long v = 0;
    while (bytes--)
        v = (v << 8) | p[bytes];
    return v;
}

static void
reader_frame(struct reader_area *a, long code)
{
    unsigned char frame[4];
    reader_put32(frame, (unsigned int)(int)code);
    reader_write_full(a->replies, frame, 4);
}

/* The open descriptor for a->path, kept open by name while there is room
 * (*kept = 1); otherwise the caller closes it after the request. */
static long
reader_open(struct reader_area *a, unsigned long len, int *kept)
{
    int i;
    long fd;

    *kept = 1;
    for (i = 0; i < a->n_fds; i++)
        if (memcmp(a->names[i], a->path, len + 1) == 0)
            return a->fds[i];
    fd = reader_syscall(SYS_openat, AT_FDCWD, (long)a->path, O_RDONLY | O_CLOEXEC, 0);
    if (fd >= 0 && a->n_fds < READER_FDS && len < READER_NAME) {
        memcpy(a->names[a->n_fds], a->path, len + 1);
        a->fds[a->n_fds++] = (int)fd;
    } else {
        *kept = 0;
    }
    return fd;
}

static int
reader_main(void *arg)
{
    struct reader_area *a = arg;

    reader_syscall(SYS_close, a->parent_ends[0], 0, 0, 0);
    reader_syscall(SYS_close, a->parent_ends[1], 0, 0, 0);
    for (;;) {
        unsigned long long offset;
        unsigned long length, len;
        long fd;
        int kept;

        if (!reader_read_full(a->requests, a->head, 16))
            break;
        offset = reader_get(a->head, 8);
        length = (unsigned long)reader_get(a->head + 8, 4);
        len = (unsigned long)reader_get(a->head + 12, 4);
        if (len == 0 || len >= READER_PATH || !reader_read_full(a->requests,
                                                                (unsigned char *)a->path, len))
            break;
        a->path[len] = '\0';
        fd = reader_open(a, len, &kept);
        if (fd < 0) {
            reader_frame(a, fd);
            continue;
        }
        while (length) {
            unsigned long want = length < READER_CHUNK ? length : READER_CHUNK;
            long n = reader_syscall(SYS_pread64, fd, (long)(a->buf + 4), (long)want,
                                    (long)offset);
            if (n == -EINTR)
                continue;
            if (n < 0) {
                reader_frame(a, n);
                goto next;
            }
            if (n == 0)
                break;
            reader_put32(a->buf, (unsigned int)n);
            offset += (unsigned long long)n;
            length -= (unsigned long)n;
            if (length == 0) {  /* the last data and the end of the reply in one write */
                reader_put32(a->buf + 4 + n, 0);
                reader_write_full(a->replies, a->buf, 4 + (unsigned long)n + 4);
                goto next;
            }
            reader_write_full(a->replies, a->buf, 4 + (unsigned long)n);
        }
        reader_frame(a, 0);
    next:
        if (!kept)
            reader_syscall(SYS_close, fd, 0, 0, 0);
    }
    reader_exit();
}

static PyObject *
initium_reader_start(PyObject *self, PyObject *args)
{
    int requests, replies, end_a, end_b, saved;
    size_t size = READER_GUARD + READER_STACK + sizeof(struct reader_area);
    struct reader_area *a;
    sigset_t all, old;
    char *mem;
    pid_t pid;

    if (!PyArg_ParseTuple(args, "ii(ii):reader_start", &requests, &replies, &end_a, &end_b))
        return NULL;
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return raise_errno(NULL, NULL);
    if (mprotect(mem, READER_GUARD, PROT_NONE) < 0) {  /* a stack overflow faults */
        saved = errno;
        munmap(mem, size);
        errno = saved;
        return raise_errno(NULL, NULL);
    }
    a = (struct reader_area *)(mem + READER_GUARD + READER_STACK);
    a->requests = requests;
    a->replies = replies;
    a->parent_ends[0] = end_a;
    a->parent_ends[1] = end_b;
    /* No signal may reach a handler (the parent's code) in the child. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = clone(reader_main, mem + READER_GUARD + READER_STACK, CLONE_VM | SIGCHLD, a);
    saved = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        munmap(mem, size);
        errno = saved;
        return raise_errno(NULL, NULL);
    }
    return PyLong_FromLong((long)pid);
}
#endif /* x86_64, aarch64 */

static PyMethodDef initium_methods[] = {
    {"mount", (PyCFunction)(void (*)(void))initium_mount, METH_VARARGS | METH_KEYWORDS,
     "mount(source, target, fstype, flags=0, data=None)"},
    {"umount2", (PyCFunction)(void (*)(void))initium_umount2, METH_VARARGS | METH_KEYWORDS,
     "umount2(target, flags=0)"},
    {"reboot", initium_reboot, METH_VARARGS, "reboot(cmd)"},
    {"statfs_type", initium_statfs_type, METH_VARARGS, "statfs_type(path) -> f_type"},
    {"finit_module", (PyCFunction)(void (*)(void))initium_finit_module,
     METH_VARARGS | METH_KEYWORDS, "finit_module(fd, params='', flags=0)"},
    {"pivot_root", initium_pivot_root, METH_VARARGS, "pivot_root(new_root, put_old)"},
    {"add_key", (PyCFunction)(void (*)(void))initium_add_key, METH_VARARGS | METH_KEYWORDS,
     "add_key(type, description, payload, keyring) -> key serial"},
    {"keyctl", initium_keyctl, METH_VARARGS, "keyctl(cmd, arg2=0, arg3=0, arg4=0, arg5=0)"},
    {"ioctl", initium_ioctl, METH_VARARGS, "ioctl(fd, request, buffer) -> the buffer after"},
    {"spawn", (PyCFunction)(void (*)(void))initium_spawn, METH_VARARGS | METH_KEYWORDS,
     "spawn(path, argv, env, file_actions=(), *, setsid=False, sigdefault=(), pdeathsig=0, "
     "no_new_privs=False, keep_caps=-1) -> pid"},
#ifdef HAVE_READER
    {"reader_start", initium_reader_start, METH_VARARGS,
     "reader_start(requests, replies, (parent_end, parent_end)) -> pid"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef initium_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_initium",
    .m_doc = "System calls for initium's PID 1 that the os module lacks.",
    .m_size = 0,
    .m_methods = initium_methods,
};

PyMODINIT_FUNC
PyInit__initium(void)
{
    return PyModuleDef_Init(&initium_module);
}
