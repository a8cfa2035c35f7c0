"""The swap / early-stop controller: state plus rules, testable without a model.

It takes the dev StereoSet score (SS) of each bias type (and, when the swap rule reads it, the mean dev margin
s(stereo) - s(anti)) and returns each type's direction (+1 forget stereotypes, -1 swapped: forget anti-stereotypes,
0 not trained) and whether to stop. Its state goes into checkpoints, so --resume restores it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SWAP_MODES = ("swap", "focus_worst", "pause", "none")
SWAP_SIGNALS = ("ss", "margin")


@dataclass
class SwapController:
    bias_types: list
    mode: str = "swap"  # swap (the paper) | focus_worst (the released code) | pause | none
    target: float = 50.0
    tolerance: float = 2.0  # early stop when every type's dev SS is within target +- tolerance
    margin: float = 0.0  # hysteresis: swap below target - margin, swap back above target + margin (0 = the paper)
    signal: str = "ss"  # what the swap rule reads: "ss" (dev SS against target) or "margin" (dev margin against 0)
    directions: dict = field(default_factory=dict)
    events: list = field(default_factory=list)  # every swap: {step, bias_type, ss, direction[, margin]}
    history: list = field(default_factory=list)  # every dev check: {step, ss: {...}, lms[, margin: {...}]}
    rounds: int = 0
    stop_reason: str = ""  # why the last update asked to stop ("" when it did not)
    schedule: dict = field(default_factory=dict)  # swaps fixed beforehand: {bias type: first swapped step}

    def __post_init__(self):
        if self.mode not in SWAP_MODES:
            raise ValueError(f"swap mode {self.mode!r}: expected one of {', '.join(SWAP_MODES)}")
        if self.margin < 0:
            raise ValueError(f"swap margin {self.margin}: must be 0 or more")
        if self.signal not in SWAP_SIGNALS:
            raise ValueError(f"swap signal {self.signal!r}: expected ss or margin")
        for b in self.bias_types:
            self.directions.setdefault(b, 1)

    def update(self, step: int, dev_ss: dict, dev_lms: float | None = None,
               dev_margin: dict | None = None) -> tuple[dict, bool]:
        """Apply the rules to one dev check. Returns (directions, stop). `dev_margin` (per type) is required when
        the swap rule reads the margin; early stopping always reads SS (the paper's rule)."""
        if self.signal == "margin" and self.mode != "none" and dev_margin is None:
            raise ValueError("swap signal 'margin' needs the dev margins of the check")
        self.history.append({"step": step, "ss": dict(dev_ss), "lms": dev_lms,
                             **({"margin": dict(dev_margin)} if dev_margin is not None else {})})
        self.rounds += 1
        if self.signal == "margin":
            read, target = dev_margin or {}, 0.0
        else:
            read, target = dev_ss, self.target
        if self.mode != "none":
            rule = self._want_pause if self.mode == "pause" else self._want
            for b in self.bias_types:
                if b not in read:
                    continue
                want = rule(b, read[b], target)
                if want == self.directions[b]:
                    continue
                if self.directions[b] == 0 and self.mode == "focus_worst" and want == self._last_direction(b):
                    self.directions[b] = want  # a type focus_worst left out takes part again the same way: no swap
                else:  # (taken up again the other way round, it trains swapped: a swap, logged as any other)
                    self._record(step, b, want, dev_ss, dev_margin)
        if self.mode == "focus_worst" and self.rounds > 1:
            # the type farthest from level by the signal the swap rule reads (dev SS, or the dev margin)
            worst = max((b for b in self.bias_types if b in read), key=lambda b: abs(read[b] - target))
            for b in self.bias_types:
                if b != worst:
                    self.directions[b] = 0
        stop = all(abs(dev_ss[b] - self.target) <= self.tolerance for b in self.bias_types if b in dev_ss)
        self.stop_reason = f"every bias type within {self.target:g} +- {self.tolerance:g}" if stop else ""
        if self.mode == "pause" and not any(self.directions.values()):
            stop = True  # every type is past level: there is nothing left to train toward
            self.stop_reason = "every bias type is past level and paused"
        return dict(self.directions), stop

    def apply_schedule(self, step: int) -> list:
        """Swap each scheduled type whose step has come (direction -1 from then on) and record it as an event
        {step, bias_type, ss: None, direction: -1, scheduled: True}. A type already swapped is left as it is, so
        calling this at every step, or again after a resume restored the state, records each swap once. Returns
        the events recorded by this call."""
        new = []
        for b, at in sorted(self.schedule.items(), key=lambda kv: (kv[1], kv[0])):
            if step >= at and b in self.directions and self.directions[b] != -1:
                self.directions[b] = -1
                new.append({"step": step, "bias_type": b, "ss": None, "direction": -1, "scheduled": True})
        self.events += new
        return new

    def _want(self, b: str, x: float, target: float) -> int:
        """The paper's rule: a type whose signal falls below its target is swapped, and swapped back once it rises
        above it again; at the target exactly a type keeps its direction. A dead band of +-margin around the target
        widens that: inside it a type keeps its current direction, so a dev score that wobbles around the target
        does not flip the training direction at every check."""
        if self.directions.get(b, 1) == 0:  # left out by focus_worst: taken up again by the plain rule
            return -1 if x < target else 1
        if self.directions[b] > 0:
            return -1 if x < target - self.margin else 1
        return 1 if x > target + self.margin else -1

    def _last_direction(self, b: str) -> int:
        """The direction type b last trained in, as the swaps recorded say (1 before any)."""
        return next((ev["direction"] for ev in reversed(self.events) if ev["bias_type"] == b), 1)

    def _record(self, step: int, b: str, direction: int, dev_ss: dict, dev_margin: dict | None) -> None:
        """Set type b's new direction and log the change as an event."""
        ev = {"step": step, "bias_type": b, "ss": dev_ss.get(b), "direction": direction}
        if dev_margin is not None and b in dev_margin:
            ev["margin"] = dev_margin[b]
        self.events.append(ev)
        self.directions[b] = direction

    def _want_pause(self, b: str, x: float, target: float) -> int:
        """'pause': a type whose signal falls below target - margin is no longer trained (0) instead of being
        trained toward its stereotypes, and is trained again (+1) once it is back above target + margin."""
        if self.directions.get(b, 1) > 0:
            return 0 if x < target - self.margin else 1
        return 1 if x > target + self.margin else 0

    @staticmethod
    def criterion(dev_ss: dict, target: float = 50.0) -> tuple:
        """Checkpoint choice: the largest |SS - 50| over bias types, lower is better. Ties (a small dev slice makes
        SS move in coarse steps, so one type can sit on the same value for many checks) go to the second largest,
        and so on: the deviations sorted from largest to smallest, compared in order."""
        return tuple(sorted((round(abs(v - target), 9) for v in dev_ss.values()), reverse=True))

    def state_dict(self) -> dict:
        return {"directions": dict(self.directions), "events": list(self.events), "history": list(self.history),
                "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.directions = dict(state["directions"])
        self.events = list(state["events"])
        self.history = list(state["history"])
        self.rounds = int(state["rounds"])
