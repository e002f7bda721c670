// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dp_gso_limits.h - the bound on a super-frame's segments, shared by the
 * core (dp_gso.h) and the express lane's kernel programs (bpf/), which
 * leave a super-frame past it to the core to refuse (kport_gso).
 */
#ifndef DP_GSO_LIMITS_H
#define DP_GSO_LIMITS_H

/* most segments one super-frame may be cut into: 64 KiB at the smallest
 * MSS Linux sends with (48 bytes, net.ipv4.tcp_min_snd_mss), which a peer
 * may ask for */
#define DP_GSO_MAX_SEGS 1366u

#endif /* DP_GSO_LIMITS_H */
