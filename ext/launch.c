/*
 * The `fastckpt` command: holds Ctrl-C back until fastckpt can say what it did.
 *
 * A console script is Python from its first instruction: a SIGINT (Ctrl-C), SIGTERM or SIGHUP that
 * comes while the interpreter starts and fastckpt's modules load either kills it without a word
 * (before Python installs its handler) or ends it with a traceback ("Fatal Python error:
 * init_sys_streams", or a KeyboardInterrupt raised in some import).  This launcher blocks those
 * signals first thing -- the mask survives exec -- and execs the interpreter on fastckpt.cli.run().
 * The signals stay pending; fastckpt.cli.main() unblocks them once it can handle them, and an
 * interruption then gets fastckpt's one line ("interrupted before the checkpoint began: nothing was
 * done") and exit status 130.
 *
 * FASTCKPT_PYTHON (a compile-time string) is the interpreter fastckpt was built for; when it is gone
 * (a wheel moved to another machine), python3 next to this executable, then python3 on PATH.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef FASTCKPT_PYTHON
#define FASTCKPT_PYTHON "python3"
#endif

/*
 * sys.path[0] is the working directory under -c: dropped, as a console script never has it (unless
 * PYTHONSAFEPATH kept it out).  A package that cannot be loaded (an installation this user cannot
 * read, e.g. a checkout in a 0700 directory; a dependency gone) is one line, not a traceback.
 * Python's cyclic garbage collector starts off: its passes over the objects of the modules being
 * loaded cost ~2 ms of every command; fastckpt.cli.run() turns it on again but for a checkpoint or a
 * restore, short commands that end with os._exit().
 */
static const char code[] =
	"import gc, os, sys\n"
	"gc.disable()\n"
	"if sys.path and sys.path[0] in ('', os.getcwd()): del sys.path[0]\n"
	"try:\n"
	"    from fastckpt.cli import run\n"
	"except ImportError as e:\n"
	"    sys.exit(f'fastckpt: cannot load the fastckpt package: {e} (is its installation readable by this "
	"user, uid {os.getuid()}?)')\n"
	"run()\n";

int main(int argc, char **argv)
{
	sigset_t held;

	sigemptyset(&held);
	sigaddset(&held, SIGINT);
	sigaddset(&held, SIGTERM);
	sigaddset(&held, SIGHUP);
	sigaddset(&held, SIGQUIT);
	sigprocmask(SIG_BLOCK, &held, NULL);

	char **args = calloc((size_t)argc + 3, sizeof(*args));
	if (!args) {
		fputs("fastckpt: out of memory\n", stderr);
		return 1;
	}
	args[1] = "-c";
	args[2] = (char *)code;
	for (int i = 1; i < argc; i++)
		args[i + 2] = argv[i];

	args[0] = FASTCKPT_PYTHON;
	if (strchr(args[0], '/'))
		execv(args[0], args);

	char self[PATH_MAX], sibling[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			snprintf(sibling, sizeof(sibling), "%s/python3", self);
			args[0] = sibling;
			execv(sibling, args);
		}
	}
	args[0] = "python3";
	execvp(args[0], args);
	fprintf(stderr, "fastckpt: cannot run Python (%s, then python3): %s\n", FASTCKPT_PYTHON, strerror(errno));
	return 127;
}
