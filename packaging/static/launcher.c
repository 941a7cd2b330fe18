/*
 * initium's /init: a static CPython whose main() is ours.
 *
 * As PID 1 it configures the interpreter from nothing but this file (no
 * environment, no site, sys.path = the executable, whose appended zip holds
 * the init's bytecode), fixes the hash seed so start-up never waits for the
 * kernel RNG, and calls initium.boot.boot().  If the interpreter cannot
 * start, or the init fails before its own handler exists, it says why on
 * the console and halts (or reboots/powers off, as the builder patched
 * below): PID 1 returning would make the kernel panic.
 *
 * As any other process (tests on the build host) it is an isolated Python
 * that runs `-c CODE`, `-m MODULE` or a script from its command line, with
 * the same sys.path and no environment; it never boots the host.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

/* The builder rewrites the word after the '=' in the copied binary
 * (packaging/static_python.py: EMERGENCY_MARKER); it must stay a writable
 * global so the compiler keeps the bytes and reads them at run time. */
char initium_emergency[32] = "INITIUM-EMERGENCY=halt";
#define EMERGENCY_PREFIX "INITIUM-EMERGENCY="

/* Host use only (never parsed as PID 1): "--hash-seed=N" as the first argument. */
#define HASH_SEED_OPTION "--hash-seed="

static int is_pid1;

static void
write_all(int fd, const char *text)
{
    size_t left = strlen(text);
    while (left > 0) {
        ssize_t n = write(fd, text, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        left -= (size_t)n;
    }
}

static void
write_path(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) {
        write_all(fd, text);
        close(fd);
    }
}

/* One line to wherever a person will see it: the console and the kernel log
 * as PID 1 (stdio may be missing), stderr otherwise. */
static void
say(const char *line)
{
    char buf[1024];
    if (!is_pid1) {
        write_all(2, line);
        return;
    }
    write_path("/dev/console", line);
    snprintf(buf, sizeof buf, "<2>%s", line);
    write_path("/dev/kmsg", buf);
}

static _Noreturn void
emergency(const char *what, const char *detail)
{
    char line[1024];
    const char *action = initium_emergency + strlen(EMERGENCY_PREFIX);
    int cmd = RB_HALT_SYSTEM;

    if (strcmp(action, "reboot") == 0)
        cmd = RB_AUTOBOOT;
    else if (strcmp(action, "poweroff") == 0)
        cmd = RB_POWER_OFF;
    else
        action = "halt";
    snprintf(line, sizeof line, "initium: %s: %s; %s\n", what, detail ? detail : "(no detail)",
             cmd == RB_AUTOBOOT ? "rebooting" : cmd == RB_POWER_OFF ? "powering off" : "halting");
    say(line);
    if (!is_pid1)
        exit(70);
    sync();
    reboot(cmd);
    say("initium: reboot() failed; sleeping forever\n");
    for (;;)
        pause();
}

/* "Type: message" of the pending exception, then the traceback on stderr. */
static void
describe_exception(char *out, size_t size)
{
    PyObject *type, *value, *tb;
    const char *name = "unknown error";
    const char *text = "";
    PyObject *str = NULL;

    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (type != NULL && PyType_Check(type))
        name = _PyType_Name((PyTypeObject *)type);
    if (value != NULL)
        str = PyObject_Str(value);
    if (str != NULL) {
        text = PyUnicode_AsUTF8(str);
        if (text == NULL) {
            PyErr_Clear();
            text = "";
        }
    } else {
        PyErr_Clear();
    }
    snprintf(out, size, "%s%s%s", name, *text ? ": " : "", text);
    Py_XDECREF(str);
    PyErr_Restore(type, value, tb);
    PyErr_Print();
}

/* boot(started, init_args): the clock after start-up, and what the kernel
 * passed /init beyond its name (unknown boot options without '='). */
static _Noreturn void
boot(double started, int argc, char **argv)
{
    char reason[768];
    PyObject *module, *func, *result, *clock, *args;

    module = PyImport_ImportModule("initium.boot");
    if (module == NULL) {
        describe_exception(reason, sizeof reason);
        emergency("cannot import the init", reason);
    }
    func = PyObject_GetAttrString(module, "boot");
    clock = PyFloat_FromDouble(started);
    args = PyList_New(0);
    for (int i = 1; args != NULL && i < argc; i++) {
        PyObject *word = PyUnicode_DecodeFSDefault(argv[i]);
        if (word == NULL || PyList_Append(args, word) < 0)
            Py_CLEAR(args);
        Py_XDECREF(word);
    }
    result = (func && clock && args) ? PyObject_CallFunctionObjArgs(func, clock, args, NULL)
                                     : NULL;
    if (result == NULL) {
        describe_exception(reason, sizeof reason);
        emergency("the init failed before its handler", reason);
    }
    emergency("the init returned", "boot() must never return");
}

static const char *
executable_path(const char *argv0, char *buf, size_t size)
{
    ssize_t n;
    if (argv0 != NULL && strchr(argv0, '/') != NULL)
        return argv0; /* the kernel runs "/init": no /proc needed */
    n = readlink("/proc/self/exe", buf, size - 1);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

static _Noreturn void
failed_start(PyStatus status)
{
    char detail[512];
    if (!is_pid1)
        Py_ExitStatusException(status);
    snprintf(detail, sizeof detail, "%s%s%s", status.func ? status.func : "",
             status.func ? ": " : "", status.err_msg ? status.err_msg : "exit requested");
    emergency("the interpreter did not start", detail);
}

int
main(int argc, char **argv)
{
    char exe_buf[PATH_MAX];
    const char *exe;
    wchar_t *wexe;
    struct timespec ts;
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;
    long host_seed = -1;

    is_pid1 = getpid() == 1;
    if (!is_pid1 && argc >= 2 && strncmp(argv[1], HASH_SEED_OPTION, strlen(HASH_SEED_OPTION)) == 0) {
        /* The builder's trace compiles the init's bytecode with this
         * interpreter: a fixed seed keeps set constants in one order. */
        host_seed = strtol(argv[1] + strlen(HASH_SEED_OPTION), NULL, 10);
        if (host_seed < 0 || host_seed > 4294967295L)
            host_seed = 0;
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (!is_pid1 && argc < 2) {
        fprintf(stderr, "usage: %s [--hash-seed=N] -c CODE | -m MODULE | SCRIPT [ARG...]\n"
                "(initium's /init boots only as PID 1)\n", argv[0]);
        return 2;
    }

    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        failed_start(status);

    exe = executable_path(argv[0], exe_buf, sizeof exe_buf);
    if (exe == NULL)
        emergency("the interpreter did not start", "cannot find its own executable");
    wexe = Py_DecodeLocale(exe, NULL);
    if (wexe == NULL)
        emergency("the interpreter did not start", "cannot decode the executable path");

    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.user_site_directory = 0;
    config.install_signal_handlers = 1;
    config.pathconfig_warnings = 0;
    config.use_frozen_modules = 1;
    config.module_search_paths_set = 1;
    /* As PID 1 the kernel passes unknown boot options as arguments: never parse them. */
    config.parse_argv = is_pid1 ? 0 : 1;
    if (is_pid1) {
        config.use_hash_seed = 1;
        config.hash_seed = 0;
    } else if (host_seed >= 0) {
        config.use_hash_seed = 1;
        config.hash_seed = (unsigned long)host_seed;
    }
    status = PyWideStringList_Append(&config.module_search_paths, wexe);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetString(&config, &config.executable, wexe);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetString(&config, &config.home, L"/");
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    PyMem_RawFree(wexe);
    if (PyStatus_Exception(status))
        failed_start(status);

    if (!is_pid1)
        return Py_RunMain();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    boot((double)ts.tv_sec + (double)ts.tv_nsec / 1e9, argc, argv);
}
