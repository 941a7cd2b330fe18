/*
 * _selinux_min: the libselinux calls initium's security stages need, typed.
 *
 * libselinux's own Python bindings are a SWIG interface to the whole
 * library (hundreds of wrappers and a Python shim); PID 1 needs a dozen:
 * loading the policy, looking up file labels, labelling files and itself,
 * and the enforcing switch.  Linked against the static libselinux.a,
 * libsepol.a and libpcre2-8.a.  Errors raise OSError(errno, strerror,
 * filename) like the os module; every label is a str.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <selinux/label.h>
#include <selinux/selinux.h>
#include <stdio.h>
#include <unistd.h>

/* libselinux's record of where selinuxfs is (found at start-up or given by
 * set_selinuxmnt); declared in its private header only. */
extern char *selinux_mnt;

#define HANDLE_NAME "_selinux_min.labels"

static PyObject *
raise_errno(PyObject *filename)
{
    if (errno == 0)
        errno = EINVAL;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename);
    return NULL;
}

/* A context libselinux allocated, as str (freed either way). */
static PyObject *
context_str(char *con)
{
    PyObject *s = PyUnicode_DecodeFSDefault(con);
    freecon(con);
    return s;
}

static PyObject *
sel_is_selinux_enabled(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(is_selinux_enabled());
}

static PyObject *
sel_security_getenforce(PyObject *self, PyObject *unused)
{
    int rc;
    errno = 0;
    rc = security_getenforce();
    if (rc < 0)
        return raise_errno(NULL);
    return PyLong_FromLong(rc);
}

static PyObject *
sel_security_setenforce(PyObject *self, PyObject *args)
{
    int value;
    if (!PyArg_ParseTuple(args, "i:security_setenforce", &value))
        return NULL;
    errno = 0;
    if (security_setenforce(value) < 0)
        return raise_errno(NULL);
    Py_RETURN_NONE;
}

/* Our own write to <selinuxfs>/load rather than libselinux's
 * security_load_policy: that one lives in an object file which also holds
 * selinux_mkload_policy and so links all of libsepol (~0.5 MB) in. */
static PyObject *
sel_security_load_policy(PyObject *self, PyObject *args)
{
    Py_buffer policy;
    char path[PATH_MAX];
    const char *at;
    Py_ssize_t left;
    ssize_t n = 0;
    int fd, saved = 0;

    if (!PyArg_ParseTuple(args, "y*:security_load_policy", &policy))
        return NULL;
    if (selinux_mnt == NULL) {
        PyBuffer_Release(&policy);
        errno = ENOENT;
        return raise_errno(NULL);
    }
    snprintf(path, sizeof path, "%s/load", selinux_mnt);
    Py_BEGIN_ALLOW_THREADS
    fd = open(path, O_RDWR | O_CLOEXEC);
    at = policy.buf;
    left = policy.len;
    while (fd >= 0 && left > 0) {
        n = write(fd, at, (size_t)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        at += n;
        left -= n;
    }
    saved = errno;
    if (fd >= 0)
        close(fd);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&policy);
    if (fd < 0 || left > 0) {
        errno = n == 0 && fd >= 0 ? EIO : saved;
        return raise_errno(NULL);
    }
    Py_RETURN_NONE;
}

/* Where selinuxfs is mounted, for a caller that mounted it itself before
 * security_load_policy (libselinux looks once, when the process starts). */
static PyObject *
sel_set_selinuxmnt(PyObject *self, PyObject *args)
{
    const char *mnt;
    if (!PyArg_ParseTuple(args, "s:set_selinuxmnt", &mnt))
        return NULL;
    set_selinuxmnt(mnt);
    Py_RETURN_NONE;
}

static PyObject *
sel_getcon(PyObject *self, PyObject *unused)
{
    char *con = NULL;
    errno = 0;
    if (getcon_raw(&con) < 0)
        return raise_errno(NULL);
    return context_str(con);
}

static PyObject *
sel_setcon(PyObject *self, PyObject *args)
{
    const char *con;
    if (!PyArg_ParseTuple(args, "s:setcon", &con))
        return NULL;
    errno = 0;
    if (setcon_raw(con) < 0)
        return raise_errno(NULL);
    Py_RETURN_NONE;
}

static PyObject *
file_label(PyObject *args, const char *format, int follow, int set)
{
    PyObject *path_obj, *path = NULL;
    const char *con = NULL;
    char *got = NULL;
    int rc;

    if (set ? !PyArg_ParseTuple(args, format, &path_obj, &con)
            : !PyArg_ParseTuple(args, format, &path_obj))
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path))
        return NULL;
    errno = 0;
    Py_BEGIN_ALLOW_THREADS
    if (set)
        rc = follow ? setfilecon_raw(PyBytes_AS_STRING(path), con)
                    : lsetfilecon_raw(PyBytes_AS_STRING(path), con);
    else
        rc = follow ? getfilecon_raw(PyBytes_AS_STRING(path), &got)
                    : lgetfilecon_raw(PyBytes_AS_STRING(path), &got);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (rc < 0)
        return raise_errno(path_obj);
    if (set)
        Py_RETURN_NONE;
    return context_str(got);
}

static PyObject *
sel_setfilecon(PyObject *self, PyObject *args)
{
    return file_label(args, "Os:setfilecon", 1, 1);
}

static PyObject *
sel_lsetfilecon(PyObject *self, PyObject *args)
{
    return file_label(args, "Os:lsetfilecon", 0, 1);
}

static PyObject *
sel_getfilecon(PyObject *self, PyObject *args)
{
    return file_label(args, "O:getfilecon", 1, 0);
}

static PyObject *
sel_lgetfilecon(PyObject *self, PyObject *args)
{
    return file_label(args, "O:lgetfilecon", 0, 0);
}

static void
close_handle(PyObject *capsule)
{
    struct selabel_handle *h = PyCapsule_GetPointer(capsule, HANDLE_NAME);
    if (h != NULL)
        selabel_close(h);
}

/* The file-contexts backend; ``path`` None = the loaded policy's own file. */
static PyObject *
sel_selabel_open(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", "validate", NULL};
    PyObject *path_obj = Py_None, *path = NULL;
    int validate = 0;
    struct selinux_opt opts[2];
    unsigned n = 0;
    struct selabel_handle *h;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|Op:selabel_open", keywords,
                                     &path_obj, &validate))
        return NULL;
    if (path_obj != Py_None) {
        if (!PyUnicode_FSConverter(path_obj, &path))
            return NULL;
        opts[n].type = SELABEL_OPT_PATH;
        opts[n++].value = PyBytes_AS_STRING(path);
    }
    opts[n].type = SELABEL_OPT_VALIDATE;
    opts[n++].value = validate ? (char *)1 : NULL;
    errno = 0;
    Py_BEGIN_ALLOW_THREADS
    h = selabel_open(SELABEL_CTX_FILE, opts, n);
    Py_END_ALLOW_THREADS
    Py_XDECREF(path);
    if (h == NULL)
        return raise_errno(path_obj == Py_None ? NULL : path_obj);
    return PyCapsule_New(h, HANDLE_NAME, close_handle);
}

static PyObject *
sel_selabel_lookup(PyObject *self, PyObject *args)
{
    PyObject *capsule, *path_obj, *path = NULL;
    int mode = 0, rc;
    char *con = NULL;
    struct selabel_handle *h;

    if (!PyArg_ParseTuple(args, "OO|i:selabel_lookup", &capsule, &path_obj, &mode))
        return NULL;
    h = PyCapsule_GetPointer(capsule, HANDLE_NAME);
    if (h == NULL)
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path))
        return NULL;
    errno = 0;
    rc = selabel_lookup_raw(h, &con, PyBytes_AS_STRING(path), mode);
    Py_DECREF(path);
    if (rc < 0) {
        if (errno == ENOENT)   /* no rule matches: a value, not an error */
            Py_RETURN_NONE;
        return raise_errno(path_obj);
    }
    return context_str(con);
}

static PyMethodDef selinux_methods[] = {
    {"is_selinux_enabled", sel_is_selinux_enabled, METH_NOARGS, NULL},
    {"security_getenforce", sel_security_getenforce, METH_NOARGS, NULL},
    {"security_setenforce", sel_security_setenforce, METH_VARARGS, NULL},
    {"security_load_policy", sel_security_load_policy, METH_VARARGS, NULL},
    {"set_selinuxmnt", sel_set_selinuxmnt, METH_VARARGS, NULL},
    {"getcon", sel_getcon, METH_NOARGS, NULL},
    {"setcon", sel_setcon, METH_VARARGS, NULL},
    {"setfilecon", sel_setfilecon, METH_VARARGS, NULL},
    {"lsetfilecon", sel_lsetfilecon, METH_VARARGS, NULL},
    {"getfilecon", sel_getfilecon, METH_VARARGS, NULL},
    {"lgetfilecon", sel_lgetfilecon, METH_VARARGS, NULL},
    {"selabel_open", (PyCFunction)(void (*)(void))sel_selabel_open,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"selabel_lookup", sel_selabel_lookup, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef selinux_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_selinux_min",
    .m_doc = "The libselinux calls of initium's security stages.",
    .m_size = 0,
    .m_methods = selinux_methods,
};

PyMODINIT_FUNC
PyInit__selinux_min(void)
{
    return PyModuleDef_Init(&selinux_module);
}
