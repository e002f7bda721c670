"""The node's log: one JSON object a line on stderr, with the event's fields.

event("pod added", pod=name, planes=[...])
-> {"ts": 1700000000.123, "level": "info", "msg": "pod added", "pod": ..., ...}
"""

import json
import logging
import sys

#: the logger of the node service and its parts
log = logging.getLogger("dataplane")


class JSONFormatter(logging.Formatter):
    def format(self, record):
        d = {
            "ts": round(record.created, 3),
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
