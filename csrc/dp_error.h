/*
 * dp_error.h - the one error idiom of the core's control path.
 *
 * A control function that fails says why and returns a negative errno in one
 * statement, having changed nothing:
 *
 *     if (plane < 0 || plane >= DP_MAX_PLANES)
 *         return dp_fail(-EINVAL, "plane %d out of range 0..%d", plane, DP_MAX_PLANES - 1);
 *
 * The message is kept per thread until the next failure; dp_last_error()
 * (dataplane.h) reads it and Python puts it into the exception it raises.
 * The hot path never fails and never calls this.
 */
#ifndef DP_ERROR_H
#define DP_ERROR_H

/* record the message fmt, ... and return err (a negative errno) */
int dp_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3), cold));
/* The calling thread's last message (also in dataplane.h, for Python). */
const char *dp_last_error(void);

#endif /* DP_ERROR_H */
