/*
 * dp_idle.c - a worker that finds nothing: it yields its CPU, or sleeps
 * (opt-in).
 *
 * The worker spins: it polls its ports whether frames come or not, and a
 * lone frame is taken on the next poll. After DP_IDLE_ROUNDS poll rounds in
 * a row that all came back empty it is idle, and then:
 *
 * - By default it yields (sched_yield): a thread that is runnable on its
 *   CPU runs now rather than when the worker's time slice ends. On a CPU of
 *   its own the call returns at once; on a CPU it shares, the thread that
 *   runs is often the one that feeds it - the kernel's receive work for its
 *   kernel ports (ksoftirqd, a veth's threaded NAPI that runs an AF_XDP
 *   port's XDP program), or a pod's process - which a spinning worker would
 *   otherwise hold off for the rest of its slice while it finds nothing.
 *   Each yield counts in the worker's idle_yields; idle_yield: false
 *   (dp_set_idle_yield) keeps the CPU.
 * - With an idle sleep set (dp_set_idle_sleep, the config's idle_sleep_us)
 *   it blocks in ppoll() on the receive sockets of its kernel ports
 *   (afpacket) until a frame arrives on one of them, or at most the idle
 *   sleep. The kernel wakes it when it writes a frame into the rx ring, so a
 *   frame to a kernel port waits for the wake-up (a context switch: tens of
 *   µs), not for the timeout; a port without a socket (a DPDK port) or a
 *   control-plane frame to send (ARP) waits for the timeout at worst. Each
 *   sleep counts in the worker's idle_sleeps.
 *
 * A worker with a shaped port does neither: its scheduler must run on time,
 * and frames wait in its queues while no frame arrives.
 *
 * While it sleeps the worker is offline for RCU (it holds no table entry, no
 * snapshot, no poll list), so a control change never waits for it. Its
 * timer slack is 1 µs, so a timeout is not rounded up by the default 50 µs.
 */
#define _GNU_SOURCE /* ppoll */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <sys/prctl.h>

#include "dp_error.h"
#include "dp_internal.h"

#define DP_IDLE_MAX_US 100000u /* the longest idle sleep: 100 ms */

atomic_uint dp_idle_us;
static atomic_int dp_idle_yield = 1;

/* per worker: timer slack set */
static struct {
    int slack;
} __rte_cache_aligned idle[DP_MAX_WORKERS];

int
dp_set_idle_sleep(unsigned us)
{
    if (us > DP_IDLE_MAX_US)
        return dp_fail(-EINVAL, "idle_sleep_us %u out of range 0..%u", us, DP_IDLE_MAX_US);
    atomic_store(&dp_idle_us, us);
    return 0;
}

void
dp_set_idle_yield(int on)
{
    atomic_store(&dp_idle_yield, on != 0);
}

static void
idle_yield(uint64_t *wc)
{
    if (!atomic_load_explicit(&dp_idle_yield, memory_order_relaxed))
        return;
    (void)sched_yield();
    wc[DP_WORKER_IDLE_YIELDS]++;
}

void
dp_worker_idle(int id, const struct dp_poll_list *pl, uint64_t *wc)
{
    unsigned us = atomic_load_explicit(&dp_idle_us, memory_order_relaxed);
    struct pollfd fds[DP_MAX_PORTS];
    nfds_t nf = 0;

    for (uint16_t i = 0; i < pl->n; i++) {
        const struct dp_port *p =
            atomic_load_explicit(&dp.ports[pl->e[i].port], memory_order_acquire);
        if (p == NULL)
            continue;
        if (p->qos != NULL)
            return; /* a shaped port's scheduler runs on time: no yield, no sleep */
        if (us == 0)
            continue;
        if (p->driver == DP_DRV_AFPACKET && nf < RTE_DIM(fds)) {
            fds[nf].fd = dp_afp_rx_fd(p->afp);
            fds[nf].events = POLLIN;
            fds[nf++].revents = 0;
        }
    }
    if (us == 0) {
        idle_yield(wc);
        return;
    }
    if (!idle[id].slack) {
        (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL); /* 1 µs, this thread */
        idle[id].slack = 1;
    }
    struct timespec ts = {.tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000};
    /* nothing read above is used past this point: offline, so a grace
     * period does not wait for the sleep (a port closed meanwhile wakes it
     * with POLLNVAL at worst) */
    rte_rcu_qsbr_thread_offline(dp.qsbr, (unsigned)id);
    (void)ppoll(fds, nf, &ts, NULL);
    rte_rcu_qsbr_thread_online(dp.qsbr, (unsigned)id);
    wc[DP_WORKER_IDLE_SLEEPS]++;
}
