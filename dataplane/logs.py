"""The node's log: one JSON object a line on stderr, with the event's fields.

event("pod added", pod=name, planes=[...])
-> {"ts": 1700000000.123, "time": "2023-11-14T22:13:20.123Z", "level": "info",
    "msg": "pod added", "pod": ..., ...}
"""

import json
import logging
import sys
import time

#: the logger of the node service and its parts
log = logging.getLogger("dataplane")


class JSONFormatter(logging.Formatter):
    def format(self, record):
        d = {
            "ts": round(record.created, 3),
            # the same instant for people: UTC, to the millisecond
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        d.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def setup_logging(level=logging.INFO):
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JSONFormatter())
    root = logging.getLogger("dataplane")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False


def event(msg, **fields):
    """Log event ``msg`` (level info) with ``fields``."""
    log.info(msg, extra={"fields": fields})


def warning_event(msg, **fields):
    """Log event ``msg`` at level warning (something an operator should
    know of: a pod removed without being asked, ...) with ``fields``."""
    log.warning(msg, extra={"fields": fields})
