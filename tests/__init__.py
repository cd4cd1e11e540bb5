# lt_d2's compatibility fixes before any detectron2.data import, also in processes that a test
# spawns: they import the test module (tests.<name>), hence this package, first.
import lt_d2  # noqa: F401
