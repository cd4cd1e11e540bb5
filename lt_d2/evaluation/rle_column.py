# Copyright (c) lt_d2 contributors.
"""Many compressed RLE masks stored as one byte buffer: the segmentation column of LVIS results.

detectron2 keeps a mask prediction as a dict {"size": [h, w], "counts": str}: on LVIS v1 val
(~6M detections) the dicts, lists and strings take ~3x the bytes of the RLE text itself, and
reading them back one by one dominates a fast mask evaluation. :class:`RLEColumn` keeps the text
of all masks in one uint8 array with the offsets of each and an (N, 2) array of sizes. It reads
like a sequence of those dicts (``len``, indexing, iteration, slicing, ``take``), so code that
expects the dicts (json export, lvis-api) still works.
"""
import numpy as np


class RLEColumn:
    """N compressed RLEs: ``buf[start[i]:end[i]]`` is mask i's "counts", ``hw[i]`` its size."""

    def __init__(self, buf, start, end, hw):
        self.buf = np.asarray(buf, np.uint8).reshape(-1)
        self.start = np.asarray(start, np.int64).reshape(-1)
        self.end = np.asarray(end, np.int64).reshape(-1)
        self.hw = np.asarray(hw, np.int64).reshape(-1, 2)
        if not len(self.start) == len(self.end) == len(self.hw):
            raise ValueError(f"RLEColumn needs as many starts, ends and sizes: {len(self.start)}, "
                             f"{len(self.end)}, {len(self.hw)}")

    @classmethod
    def from_counts(cls, counts, hw):
        """From the "counts" strings (str or bytes) and the [h, w] of each mask."""
        if not set(map(type, counts)) - {str}:
            text = "".join(counts).encode("ascii")
        else:
            text = b"".join(c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts)
        end = np.cumsum(np.fromiter(map(len, counts), np.int64, len(counts)))
        return cls(np.frombuffer(text, np.uint8), end - np.diff(end, prepend=0), end, hw)

    @classmethod
    def from_rles(cls, rles, counts=None):
        """From pycocotools' compressed RLE dicts, e.g. ``mask_util.encode``'s output;
        counts: their :func:`compressed_counts`, when already known."""
        counts = compressed_counts(rles) if counts is None else counts
        if counts is None:
            raise ValueError("RLEColumn takes compressed RLEs (str or bytes counts); convert "
                             "polygons and uncompressed RLEs with pycocotools' frPyObjects")
        sizes = [s for rle in rles for s in rle["size"]]
        return cls.from_counts(counts, np.array(sizes, np.int64).reshape(-1, 2))

    @classmethod
    def concatenate(cls, columns):
        columns = list(columns)
        if not columns:
            return cls(np.zeros(0, np.uint8), [], [], np.zeros((0, 2)))
        offsets = np.cumsum([0] + [len(c.buf) for c in columns[:-1]])
        return cls(np.concatenate([c.buf for c in columns]),
                   np.concatenate([c.start + o for c, o in zip(columns, offsets)]),
                   np.concatenate([c.end + o for c, o in zip(columns, offsets)]),
                   np.concatenate([c.hw for c in columns]))

    def __len__(self):
        return len(self.start)

    def take(self, rows):
        """The masks at rows (an index array), sharing this column's buffer."""
        return RLEColumn(self.buf, self.start[rows], self.end[rows], self.hw[rows])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(index)
        h, w = self.hw[index].tolist()
        counts = self.buf[self.start[index]:self.end[index]].tobytes().decode("ascii")
        return {"size": [h, w], "counts": counts}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):  # only this column's text, for pickling (multi-process gathers)
        lengths = self.end - self.start
        if len(self) and self.start[0] == 0 and self.end[-1] == len(self.buf) \
                and np.array_equal(self.start[1:], self.end[:-1]):
            text = self.buf  # already its own contiguous text, as LTLVISEvaluator's per image
        else:
            text = np.frombuffer(b"".join(self.buf[s:e].tobytes() for s, e in zip(
                self.start.tolist(), self.end.tolist())), np.uint8)
        return {"buf": text, "lengths": lengths, "hw": self.hw}

    def __setstate__(self, state):
        end = np.cumsum(state["lengths"])
        self.__init__(state["buf"], end - state["lengths"], end, state["hw"])


def compressed_counts(segms):
    """The "counts" of each segmentation if all are compressed RLE dicts, else None."""
    try:  # a polygon list raises TypeError; an uncompressed RLE has list counts
        counts = [s["counts"] for s in segms]
    except (KeyError, TypeError):
        return None
    return counts if not set(map(type, counts)) - {str, bytes} else None
