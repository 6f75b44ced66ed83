"""``make bench``: run every benchmark and print a summary table at the end."""

from __future__ import annotations

from bench import durable_submit


def main() -> None:
    reports = [durable_submit.main([])]
    print()
    for report in reports:
        print(report.table())
        print()


if __name__ == "__main__":
    main()
