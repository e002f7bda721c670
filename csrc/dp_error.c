/*
 * dp_error.c - the message of the last failed control call (dp_error.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "dataplane.h"
#include "dp_error.h"

static __thread char dp_errbuf[512];

int
dp_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dp_errbuf, sizeof(dp_errbuf), fmt, ap);
    va_end(ap);
    return err < 0 ? err : -EIO; /* a failure never reads as success */
}

const char *
dp_last_error(void)
{
    return dp_errbuf;
}
