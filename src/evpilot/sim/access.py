"""The simulator's access hardware: an RFID reader, a switch input and a cable lock actuator."""

from __future__ import annotations


class SimCardReader:
    """Cards presented through `/api/sim/chargers/{id}/card`, handed to the controller on its next tick."""

    def __init__(self) -> None:
        self._uids: list[str] = []

    def present(self, uid: str) -> None:
        """A card is held in front of the reader."""
        self._uids.append(uid)

    def take(self) -> list[str]:
        """The uids read since the last call."""
        uids, self._uids = self._uids, []
        return uids


class SimSwitch:
    """A switch input's contact (open until closed)."""

    def __init__(self) -> None:
        self.contact: bool | None = False

    def closed(self) -> bool | None:
        """The contact is closed."""
        return self.contact


class SimLock:
    """A lock actuator that reaches the driven position at the next read; jammed, it stalls and a drive
    is lost (freed, it moves only when driven again)."""

    def __init__(self) -> None:
        self.position = False
        self.target = False
        self.jammed = False
        self.drives = 0

    def drive(self, lock: bool) -> None:
        """Start moving to locked (True) or unlocked (False)."""
        self.drives += 1
        if not self.jammed:
            self.target = lock

    def sensed(self) -> bool | None:
        """The position switch: the lock moves once a read after the drive, a jammed lock never moves."""
        if not self.jammed:
            self.position = self.target
        return self.position
