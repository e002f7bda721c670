/*
 * afpacket_gen.c - traffic source of the AF_PACKET benchmark (bench.afpacket).
 *
 *     afpacket_gen IFNAME PCAP [--once] [--pps N]
 *
 * Replays the frames of PCAP (classic pcap, Ethernet) on IFNAME through a
 * PACKET_TX_RING (TPACKET_V2) with PACKET_QDISC_BYPASS. Every ring frame is
 * filled once, before the loop: frame i of the ring holds pcap frame
 * i % n. The loop then only flips tp_status to TP_STATUS_SEND_REQUEST for a
 * batch of frames and kicks the kernel with one sendto(); no per-packet copy
 * or syscall in user space, so the rate is bounded by the kernel's own
 * per-skb cost (allocate, copy, veth xmit, queue to the receiving CPU) on
 * the generator's CPU.
 *
 *   default  replay forever (until SIGINT/SIGTERM), as fast as possible;
 *   --pps N  ... at most N frames per second (batches of GEN_PACED_BATCH,
 *            each sent when its time has come);
 *   --once   send every pcap frame exactly once, paced at GEN_ONCE_BATCH
 *            frames per millisecond (a functional check, no overload).
 *
 * On exit it prints "gen: requested=<frames handed to the kernel>".
 * Built by bench.afpacket with the system C compiler (no DPDK needed).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <linux/if_packet.h>

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

#define GEN_BLOCK_SIZE 4096u /* ring block: one page */
#define GEN_MIN_FRAMES 4096u /* ring frames, at least (power of two) */
#define GEN_BATCH 256u       /* frames flagged per kick */
#define GEN_PACED_BATCH 32u  /* --pps: frames per kick */
#define GEN_MAX_LATE_S 0.001 /* --pps: largest catch-up, seconds */
#define GEN_ONCE_BATCH 16u   /* --once: frames per kick, one kick per ms */
#define GEN_MAX_FRAME 1514u
#define GEN_SNDBUF (256 << 20) /* bytes of skbs in flight, at most */
/* frame data offset in a V2 tx frame (no PACKET_TX_HAS_OFF) */
#define GEN_DATA_OFF (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))

static volatile sig_atomic_t stop;

static void
on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

struct frame {
    uint32_t len;
    uint8_t data[GEN_MAX_FRAME];
};

/* Read every record of a classic pcap file (either byte order). */
static struct frame *
read_pcap(const char *path, uint32_t *n_out)
{
    FILE *f = fopen(path, "rb");
    uint32_t gh[6], rh[4], n = 0, cap = 1024;
    struct frame *fr;
    int swap;

    if (f == NULL) {
        fprintf(stderr, "gen: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (fread(gh, sizeof(gh), 1, f) != 1) {
        fprintf(stderr, "gen: %s: not a pcap file (short header)\n", path);
        exit(2);
    }
    if (gh[0] == 0xa1b2c3d4 || gh[0] == 0xa1b23c4d)
        swap = 0;
    else if (gh[0] == 0xd4c3b2a1 || gh[0] == 0x4d3cb2a1)
        swap = 1;
    else {
        fprintf(stderr, "gen: %s: not a pcap file (magic %#x)\n", path, gh[0]);
        exit(2);
    }
    fr = malloc(cap * sizeof(*fr));
    while (fr != NULL && fread(rh, sizeof(rh), 1, f) == 1) {
        uint32_t incl = swap ? __builtin_bswap32(rh[2]) : rh[2];

        if (incl > GEN_MAX_FRAME || incl < 14) {
            fprintf(stderr, "gen: %s: record %u has %u bytes (14..%u)\n", path, n, incl,
                    GEN_MAX_FRAME);
            exit(2);
        }
        if (n == cap) {
            cap *= 2;
            fr = realloc(fr, cap * sizeof(*fr));
            if (fr == NULL)
                break;
        }
        if (fread(fr[n].data, incl, 1, f) != 1) {
            fprintf(stderr, "gen: %s: truncated record %u\n", path, n);
            exit(2);
        }
        fr[n++].len = incl;
    }
    fclose(f);
    if (fr == NULL) {
        fprintf(stderr, "gen: out of memory\n");
        exit(2);
    }
    if (n == 0) {
        fprintf(stderr, "gen: %s: no frames\n", path);
        exit(2);
    }
    *n_out = n;
    return fr;
}

static void
die(const char *what)
{
    fprintf(stderr, "gen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void
kick(int fd)
{
    /* ENOBUFS/EAGAIN: frames stay flagged, the next kick sends them */
    (void)sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
}

static inline int
frame_free(const struct tpacket2_hdr *h)
{
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

    st &= ~(uint32_t)(TP_STATUS_TS_SOFTWARE | TP_STATUS_TS_RAW_HARDWARE);
    return st == TP_STATUS_AVAILABLE;
}

int
main(int argc, char **argv)
{
    struct tpacket_req req;
    struct sockaddr_ll sll;
    struct frame *fr;
    uint32_t n, fsize, ring_n, head = 0, maxlen = 0, i;
    uint64_t requested = 0;
    double pps = 0, t0 = 0;
    int once = 0, fd, ver = TPACKET_V2, one = 1, sndbuf = GEN_SNDBUF;
    unsigned ifindex;
    uint8_t *map;

    for (i = 3; i < (uint32_t)argc; i++) {
        if (!strcmp(argv[i], "--once")) {
            once = 1;
        } else if (!strcmp(argv[i], "--pps") && i + 1 < (uint32_t)argc) {
            char *end;

            pps = strtod(argv[++i], &end);
            if (*end != '\0' || pps <= 0)
                argc = 0; /* usage */
        } else {
            argc = 0;
        }
    }
    if (argc < 3) {
        fprintf(stderr, "usage: %s IFNAME PCAP [--once] [--pps N]\n", argv[0]);
        return 2;
    }
    fr = read_pcap(argv[2], &n);
    for (i = 0; i < n; i++)
        if (fr[i].len > maxlen)
            maxlen = fr[i].len;

    /* ring: small frames for small packets (fewer cache lines, more fit) */
    fsize = 128;
    while (fsize < GEN_DATA_OFF + maxlen)
        fsize *= 2;
    ring_n = GEN_MIN_FRAMES;
    while (ring_n < n)
        ring_n *= 2;

    ifindex = if_nametoindex(argv[1]);
    if (ifindex == 0)
        die(argv[1]);
    fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0)
        die("socket");
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof(ver)) < 0)
        die("PACKET_VERSION");
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
        die("PACKET_QDISC_BYPASS");
    if (setsockopt(fd, SOL_PACKET, PACKET_LOSS, &one, sizeof(one)) < 0)
        die("PACKET_LOSS");
    /* sent skbs stay charged to this socket until the receiving side
	 * frees them (after forwarding, on the other CPU): with the default
	 * send buffer only a few hundred are in flight and the generator
	 * stalls on the latency of the path, not on its own cost */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        die("SO_SNDBUFFORCE");
    memset(&req, 0, sizeof(req));
    req.tp_block_size = GEN_BLOCK_SIZE > fsize ? GEN_BLOCK_SIZE : fsize;
    req.tp_frame_size = fsize;
    req.tp_frame_nr = ring_n;
    req.tp_block_nr = ring_n / (req.tp_block_size / fsize);
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) < 0)
        die("PACKET_TX_RING");
    map = mmap(NULL, (size_t)req.tp_block_size * req.tp_block_nr, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED)
        die("mmap");
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = 0; /* send only: no rx hook */
    sll.sll_ifindex = (int)ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        die("bind");

    /* fill every ring frame once; the loop only flips the status word */
    for (i = 0; i < ring_n; i++) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(map + (size_t)i * fsize);
        const struct frame *f = &fr[i % n];

        memcpy((uint8_t *)h + GEN_DATA_OFF, f->data, f->len);
        h->tp_len = f->len;
        h->tp_snaplen = f->len;
    }

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fprintf(stderr, "gen: %s: %u frames from %s, ring %u x %u bytes%s\n", argv[1], n, argv[2],
            ring_n, fsize, once ? ", once" : "");
    if (pps > 0)
        fprintf(stderr, "gen: at most %.0f frames/s\n", pps);

    t0 = now_s();
    while (!stop) {
        uint32_t batch = once ? GEN_ONCE_BATCH : pps > 0 ? GEN_PACED_BATCH : GEN_BATCH, k;

        /* --pps: wait until this batch is due (sleep, then spin); after
		 * falling behind by more than GEN_MAX_LATE_S, do not catch up
		 * with a burst above the rate: restart the schedule from now */
        while (pps > 0 && !stop) {
            double late = now_s() - (t0 + (double)requested / pps);

            if (late > GEN_MAX_LATE_S)
                t0 += late;
            if (late >= 0)
                break;
            if (late < -200e-6) { /* sleep, leaving 100 us to spin */
                double d = -late - 100e-6;
                struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};

                nanosleep(&ts, NULL);
            }
        }
        if (once && requested + batch > n)
            batch = (uint32_t)(n - requested);
        for (k = 0; k < batch && !stop; k++) {
            struct tpacket2_hdr *h = (struct tpacket2_hdr *)(map + (size_t)head * fsize);

            while (!frame_free(h) && !stop)
                kick(fd); /* ring full: push what is queued */
            __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
            head = (head + 1) & (ring_n - 1);
            requested++;
        }
        kick(fd);
        if (once) {
            struct timespec ms = {0, 1000000};

            if (requested >= n)
                break;
            nanosleep(&ms, NULL);
        }
    }
    if (once) { /* let the last kick drain */
        for (i = 0; i < 1000; i++) {
            uint32_t idle = 1, j;

            for (j = 0; j < ring_n && idle; j++)
                idle = frame_free((struct tpacket2_hdr *)(map + (size_t)j * fsize));
            if (idle)
                break;
            kick(fd);
            usleep(1000);
        }
    }
    printf("gen: requested=%llu\n", (unsigned long long)requested);
    return 0;
}
