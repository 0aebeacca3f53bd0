"""The one fake clock of the unit tests: injected time that sleeps advance."""


class Clock:
    """Injected time: sleep advances it (callers add the cost of each attempt to `now`)."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
