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
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
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
