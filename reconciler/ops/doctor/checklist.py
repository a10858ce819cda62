"""One line of a checklist (`reconciler doctor`): OK, WARN or FAIL, and what to do."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"  # the statuses; any FAIL fails the run


@dataclass(frozen=True, slots=True)
class Check:
    """`OK|WARN|FAIL <name>: <detail> — <fix>`."""

    status: str  # OK, WARN or FAIL
    name: str
    detail: str
    fix: str = ""  # what to do (empty for OK)

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, str]:
        return {"status": self.status, "check": self.name, "detail": self.detail,
                "fix": self.fix}
