/*
 * dp_shm.h - bursts on a port whose driver reads and writes a pod's shared
 * memory (memif), run under a fault guard.
 *
 * DPDK's net_memif maps the memory its peer (the pod's application) hands
 * over and trusts it: the peer can shrink it under the mapping (the next
 * access is a SIGBUS), point the rings anywhere, or simply exit while a
 * worker is in a burst, when the PMD's interrupt thread unmaps the memory
 * the burst is reading (a SIGSEGV). Either would kill the whole core.
 *
 * A worker therefore enters such a burst with a jump buffer set
 * (dp_shm_jb); the SIGSEGV/SIGBUS handler (dp_shm.c) jumps back out of the
 * burst when one is set on the faulting thread, and otherwise does what
 * the signal would have done (or the handler installed before ours). The
 * port is then set aside (dp_shm_faulted): its queues are not touched for
 * DP_SHM_RETRY_MS, by when the driver has let go of a peer that exited
 * (its burst then finds the port down) or a new peer has connected, and
 * then tried again - for its first DP_SHM_MAX_FAULTS faults: a cut burst
 * can cost the pool up to a burst of mbufs, so a pod that faults on
 * purpose, over and over, keeps the port set aside after that many until
 * the port is re-made. No state of the driver's is read to decide: the
 * driver reports none that tells one peer's connection from the next.
 * Each fault counts in the port's shm_faults; frames lost with it under
 * the drop reason shm_fault.
 */
#ifndef DP_SHM_H
#define DP_SHM_H

#include <setjmp.h>
#include <stdatomic.h>

#include "dataplane.h"

/* the worker's jump buffer while it is in a guarded burst, else NULL */
extern __thread sigjmp_buf *volatile dp_shm_jb __attribute__((tls_model("initial-exec")));

#define DP_SHM_MAX_FAULTS 16 /* faults after which a port stays set aside */
/* pages of zeros put, on DPDK's interrupt thread, where a memif peer's ring
 * offset pointed at nothing (dp_shm.c): at most this many a process */
#define DP_SHM_MAX_HOLES 256
#define DP_SHM_RETRY_MS 100 /* a set-aside port is tried again after this */

/* per port index: set aside after a fault (0/1; 0 when the port is added) */
extern atomic_uchar dp_shm_faulted[DP_MAX_PORTS];
/* per port index: the TSC time from which a set-aside port is tried again */
extern atomic_uint_least64_t dp_shm_retry[DP_MAX_PORTS];

/* install the SIGSEGV and SIGBUS handlers (again, if something replaced
 * them since); 0 or a negative errno */
int dp_shm_guard_install(void);

/*
 * Hold DPDK's interrupt thread, where net_memif's handlers run (a peer's
 * connection and exit: the driver maps and frees the peer's regions
 * there), in a callback of the core's own, while the calling thread works
 * on what those handlers touch; dp_intr_release lets it go on. 0 once it
 * is held; -1 if it could not be, or when called on that thread (whose
 * handlers cannot run meanwhile anyway). One holder at a time: the control
 * thread.
 */
int dp_intr_hold(void);
void dp_intr_release(void);

#endif
