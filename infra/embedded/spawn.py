"""`python -m xregion.infra.embedded.spawn HOME`: start the service described on stdin and exit.

The intermediate process of ``Supervisor.spawn_detached``: the service it starts is reparented
when this process exits, so it belongs to nobody's process tree but its own.
"""

import json
import sys
from pathlib import Path

from .supervisor import Service, Supervisor

if __name__ == "__main__":
    service = Service.from_dict(json.loads(sys.stdin.read()))
    Supervisor(Path(sys.argv[1])).spawn(service)
