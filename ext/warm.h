/*
 * fastckpt: keep the kernel's cgroup migration lock fast while CRIU runs.
 *
 * Moving a task between cgroups (writing cgroup.procs; also CRIU's cgroup
 * file system set-up on dump) takes cgroup_threadgroup_rwsem for writing. When
 * that lock has been idle, its writer first waits a full RCU grace period:
 * ~8-16 ms on these machines, every time, because the lock falls idle again
 * one grace period after its last writer. A writer arriving while the lock is
 * still "recently written" pays ~0.05 ms.
 *
 * fc_warm_run() starts a thread that rewrites "0" (this process) into the
 * cgroup.procs file it is given, the cgroup this process already is in, every
 * PERIOD: each write moves nothing, but it keeps the lock recently written, so
 * the migrations done for fastckpt (and by CRIU) meanwhile do not wait. The
 * first write waits the grace period, in this thread, while the caller goes
 * on. Readers of the lock (fork, exit) take its slower, still lock-free path
 * while it is warm, as on hosts mounted with favordynmods.
 *
 * Calls nest (a count of users: each call with USER needs one fc_warm_stop(),
 * whatever it returned); the thread stops at the last fc_warm_stop(),
 * at LIMIT_MS at the latest, or at its first failed write. Priming (USER 0)
 * starts it ahead of the operations that will use it (a command line that
 * has its modules to import first), without counting as a user.
 */
#ifndef FASTCKPT_WARM_H
#define FASTCKPT_WARM_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct fc_warm {
	pthread_t thread;
	int fd;
	int quit;  /* asked to end (under fc_warm_mu) */
	long period_ns;
	struct timespec deadline;
};

static pthread_mutex_t fc_warm_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fc_warm_cv;
static pthread_once_t fc_warm_once = PTHREAD_ONCE_INIT;
static int fc_warm_users;              /* fc_warm_run() calls with USER, not yet stopped */
static struct fc_warm *fc_warm_current; /* the running thread's state, or NULL */

static void fc_warm_add_ns(struct timespec *t, long long ns)
{
	ns += t->tv_nsec;
	t->tv_sec += ns / 1000000000LL;
	t->tv_nsec = ns % 1000000000LL;
}

static int fc_warm_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* A child of fork() has no warm-up thread: it starts from nothing (the lock as it was before fork). */
static void fc_warm_prefork(void)
{
	pthread_mutex_lock(&fc_warm_mu);
}

static void fc_warm_parent(void)
{
	pthread_mutex_unlock(&fc_warm_mu);
}

static void fc_warm_init_cv(void)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fc_warm_cv, &ca);
	pthread_condattr_destroy(&ca);
}

static void fc_warm_child(void)
{
	pthread_mutex_init(&fc_warm_mu, NULL);
	fc_warm_init_cv();
	fc_warm_users = 0;
	fc_warm_current = NULL; /* the parent's: neither joined nor freed here */
}

static void fc_warm_init(void)
{
	fc_warm_init_cv();
	pthread_atfork(fc_warm_prefork, fc_warm_parent, fc_warm_child);
}

static void *fc_warm_loop(void *arg)
{
	struct fc_warm *w = arg;
	struct timespec now, next;

	pthread_mutex_lock(&fc_warm_mu);
	while (!w->quit) {
		ssize_t n;

		pthread_mutex_unlock(&fc_warm_mu);
		n = write(w->fd, "0", 1); /* may wait a grace period: outside the mutex */
		pthread_mutex_lock(&fc_warm_mu);
		if (n != 1)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (!fc_warm_before(&now, &w->deadline))
			break;
		next = now;
		fc_warm_add_ns(&next, w->period_ns);
		while (!w->quit && !pthread_cond_timedwait(&fc_warm_cv, &fc_warm_mu, &next))
			; /* 0: woken (asked to quit, or spuriously); else timed out (or could not wait) */
	}
	w->quit = 1; /* also when it ended by itself: the next start replaces it */
	pthread_mutex_unlock(&fc_warm_mu);
	return NULL;
}

/* Stop the current thread, if any, and wait for it; called with fc_warm_mu held. */
static void fc_warm_end_locked(void)
{
	struct fc_warm *w = fc_warm_current;

	if (!w)
		return;
	fc_warm_current = NULL;
	w->quit = 1;
	pthread_cond_broadcast(&fc_warm_cv);
	pthread_mutex_unlock(&fc_warm_mu);
	pthread_join(w->thread, NULL);
	close(w->fd);
	free(w);
	pthread_mutex_lock(&fc_warm_mu);
}

/*
 * Make sure a thread runs until LIMIT_MS from now at least; USER: count one
 * more user, else only prime it: a primed
 * thread ends at its deadline, or with the last user's fc_warm_stop().
 * 0 when a thread runs, else -errno.
 */
static int fc_warm_run(const char *procs_path, long period_us, long limit_ms, int user)
{
	sigset_t all, old;
	struct timespec deadline;
	struct fc_warm *w;
	int err = 0;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	fc_warm_add_ns(&deadline, (long long)(limit_ms > 0 ? limit_ms : 0) * 1000000LL);
	pthread_once(&fc_warm_once, fc_warm_init);
	pthread_mutex_lock(&fc_warm_mu);
	if (user)
		fc_warm_users++; /* whatever this returns: each user call needs its fc_warm_stop() */
	if (period_us <= 0 || limit_ms < 0) {
		err = -EINVAL;
		goto out;
	}
	if (fc_warm_current && !fc_warm_current->quit) {
		if (fc_warm_before(&fc_warm_current->deadline, &deadline))
			fc_warm_current->deadline = deadline;
		goto out;
	}
	fc_warm_end_locked(); /* one that ended by itself */
	if (fc_warm_current)   /* another caller started one while that was joined */
		goto out;
	w = calloc(1, sizeof(*w));
	if (!w) {
		err = -ENOMEM;
		goto out;
	}
	w->fd = open(procs_path, O_WRONLY | O_CLOEXEC);
	if (w->fd < 0) {
		err = -errno;
		free(w);
		goto out;
	}
	w->period_ns = period_us * 1000L;
	w->deadline = deadline;
	/* no signal ever goes to this thread (it inherits this mask): Ctrl-C must reach the
	 * thread that blocks it for the critical section, and be held there */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&w->thread, NULL, fc_warm_loop, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		close(w->fd);
		free(w);
	} else {
		fc_warm_current = w;
	}
out:
	pthread_mutex_unlock(&fc_warm_mu);
	return err;
}

static void fc_warm_stop(void)
{
	pthread_mutex_lock(&fc_warm_mu);
	if (fc_warm_users > 0 && --fc_warm_users == 0)
		fc_warm_end_locked();
	pthread_mutex_unlock(&fc_warm_mu);
}

#endif
