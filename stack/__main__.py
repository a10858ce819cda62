"""`python -m stack up|down|restart|status|env [service ...]`."""

from __future__ import annotations

import argparse
import sys

from stack import services
from stack.process import StackError, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stack", description=__doc__,
        epilog=f"up with no service starts {', '.join(services.DEFAULT)}; "
               f"these start only when named: {', '.join(services.ON_DEMAND)}")
    parser.add_argument("command", choices=["up", "down", "restart", "status", "env"])
    parser.add_argument("services", nargs="*",
                        help=f"any of {', '.join(services.START_ORDER)} (default: all of them; "
                             f"for up, all but {', '.join(services.ON_DEMAND)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.services if name not in services.START_ORDER]
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}: choose from "
                     f"{', '.join(services.START_ORDER)}")
    names = args.services or None
    try:
        if args.command == "up":
            took = services.up(names)
            log(f"stack up in {took:.1f}s; endpoints in {services.ENDPOINTS_FILE}")
        elif args.command == "down":
            services.down(names)
        elif args.command == "restart":
            services.restart(names)
        elif args.command == "status":
            state = services.status()
            for name, ok in state.items():
                on_demand = not ok and name in services.ON_DEMAND
                print(f"{name:20} {'running' if ok else 'stopped'}"
                      + (f" (on demand: python -m stack up {name})" if on_demand else ""))
            return 0 if all(ok for name, ok in state.items()
                            if name not in services.ON_DEMAND) else 1
        elif args.command == "env":
            print("\n".join(services.env_lines()))
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
