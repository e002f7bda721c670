/*
 * dp_shm.c - the fault guard of bursts on ports backed by a pod's shared
 * memory (dp_shm.h).
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <semaphore.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <rte_interrupts.h>
#include <rte_memory.h>

#include "dp_error.h"
#include "dp_shm.h"

__thread sigjmp_buf *volatile dp_shm_jb __attribute__((tls_model("initial-exec")));
atomic_uchar dp_shm_faulted[DP_MAX_PORTS];
atomic_uint_least64_t dp_shm_retry[DP_MAX_PORTS];

/* the actions in place before ours, for faults outside a guarded burst */
static struct sigaction prev_segv, prev_bus;
static size_t page_size;

/*
 * A read past the end of a file mapped with a size its owner declared,
 * outside a worker's burst, on DPDK's interrupt thread: the memif driver
 * reads a peer's rings there as the peer connects, in the mapping of the
 * size the peer gave.
 * That page (of 4 KiB, else 2 MiB or 1 GiB for a hugepage mapping) reads
 * as zeros from now on: the driver finds no ring there and refuses the
 * peer, instead of the process dying. Never over DPDK's own memory.
 */
static int
zero_page(void *addr)
{
    static const size_t sizes[] = {0, 2u << 20, 1u << 30};
    if (addr == NULL || rte_mem_virt2memseg_list(addr) != NULL)
        return 0;
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t sz = i == 0 ? page_size : sizes[i];
        void *pg = (void *)((uintptr_t)addr & ~(uintptr_t)(sz - 1));
        if (rte_mem_virt2memseg_list(pg) != NULL ||
            rte_mem_virt2memseg_list((char *)pg + sz - 1) != NULL)
            return 0;
        void *r =
            mmap(pg, sz, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r != MAP_FAILED)
            return 1;
        /* a larger page only for a hugepage mapping, which refuses a part
         * of one (EINVAL), and whose page the whole range is: never over
         * another mapping beside it */
        if (errno != EINVAL)
            return 0;
    }
    return 0;
}

/*
 * An address nothing is mapped at, read on DPDK's interrupt thread: the
 * memif driver follows a peer's ring offset there as it connects (it does
 * not check it against the region). A page of zeros is put there, never
 * over a mapping (MAP_FIXED_NOREPLACE): the driver finds no ring and
 * refuses the peer, instead of the process dying.
 */
static int
hole_page(void *addr)
{
    /* at most this many (the interrupt thread alone counts them): past
     * that, a peer that keeps trying does what it would have done before */
    static unsigned holes;
    if (addr == NULL || (uintptr_t)addr < (uintptr_t)page_size * 16 || holes >= DP_SHM_MAX_HOLES)
        return 0; /* a null pointer's fault is a bug, not a peer's offset */
    void *pg = (void *)((uintptr_t)addr & ~(uintptr_t)(page_size - 1));
    void *r = mmap(pg, page_size, PROT_READ | PROT_WRITE,
                   MAP_FIXED_NOREPLACE | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == pg) {
        holes++;
        return 1;
    }
    if (r != MAP_FAILED) /* a kernel that took the flag for a hint */
        (void)munmap(r, page_size);
    return 0;
}

static void
shm_fault(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *jb = dp_shm_jb;
    /* sent (kill, sigqueue, tgkill: si_code <= 0), not a fault of an
     * access: never a guarded burst's, and its default action must still
     * happen */
    int sent = si != NULL && si->si_code <= 0;
    if (jb != NULL && !sent) {
        dp_shm_jb = NULL;
        siglongjmp(*jb, sig); /* SA_NODEFER: the signal stays unblocked */
    }
    /* the memif driver's thread only (DPDK's interrupt thread): a SIGBUS of
     * any other thread, on any other mapping (a store's file cut short),
     * is not hidden behind a page of zeros */
    if (sig == SIGBUS && si != NULL && si->si_code == BUS_ADRERR && rte_thread_is_intr() &&
        zero_page(si->si_addr))
        return; /* the access runs again and reads zeros */
    if (sig == SIGSEGV && si != NULL && si->si_code == SEGV_MAPERR && rte_thread_is_intr() &&
        hole_page(si->si_addr))
        return; /* the same */
    /* not a guarded burst: what would have happened without us */
    const struct sigaction *prev = sig == SIGBUS ? &prev_bus : &prev_segv;
    if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL) {
        prev->sa_sigaction(sig, si, uc);
        return;
    }
    if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    /* the default action: the faulting instruction runs again and dies;
     * a sent signal has no instruction to run again: sent again */
    signal(sig, SIG_DFL);
    if (sent)
        raise(sig);
}

static int
install(int sig, struct sigaction *prev)
{
    struct sigaction cur, sa;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == shm_fault)
        return 0; /* ours already */
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = shm_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, prev) != 0)
        return -errno;
    return 0;
}

int
dp_shm_guard_install(void)
{
    if (page_size == 0)
        page_size = (size_t)sysconf(_SC_PAGESIZE);
    int ret = install(SIGSEGV, &prev_segv);
    if (ret == 0)
        ret = install(SIGBUS, &prev_bus);
    if (ret != 0)
        return dp_fail(ret, "cannot install the shared-memory fault guard (%s)", strerror(-ret));
    return 0;
}

/* the interrupt source of dp_intr_hold: an eventfd, made at the first
 * hold; the callback says it is in (held) and waits for the holder (go) */
static struct rte_intr_handle *hold_ih;
static sem_t hold_held, hold_go;

static void
sem_take(sem_t *s)
{
    while (sem_wait(s) != 0) /* EINTR */
        ;
}

static void
hold_cb(void *arg)
{
    uint64_t v;
    (void)arg;
    (void)!read(rte_intr_fd_get(hold_ih), &v, sizeof(v));
    (void)sem_post(&hold_held);
    sem_take(&hold_go);
}

static int
hold_source(void)
{
    if (hold_ih != NULL)
        return 0;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -1;
    /* private: the source's copy lives in the heap of the process, not in
     * DPDK's memory, which the EAL's cleanup gives back */
    struct rte_intr_handle *ih = rte_intr_instance_alloc(RTE_INTR_INSTANCE_F_PRIVATE);
    if (ih == NULL || sem_init(&hold_held, 0, 0) != 0 || sem_init(&hold_go, 0, 0) != 0 ||
        rte_intr_fd_set(ih, fd) != 0 || rte_intr_type_set(ih, RTE_INTR_HANDLE_EXT) != 0 ||
        rte_intr_callback_register(ih, hold_cb, NULL) != 0) {
        rte_intr_instance_free(ih);
        close(fd);
        return -1;
    }
    hold_ih = ih;
    return 0;
}

int
dp_intr_hold(void)
{
    uint64_t one = 1;
    if (rte_thread_is_intr() || hold_source() != 0 ||
        write(rte_intr_fd_get(hold_ih), &one, sizeof(one)) != sizeof(one))
        return -1;
    sem_take(&hold_held);
    return 0;
}

void
dp_intr_release(void)
{
    (void)sem_post(&hold_go);
}
