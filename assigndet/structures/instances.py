"""``Instances``: a set of per-instance fields (boxes, scores, classes...) of one image."""

from __future__ import annotations

import itertools
from typing import Any

import torch


class Instances:
    """Per-instance fields of one image, all of the same length.

    Fields are set as attributes (``inst.gt_boxes = tensor``) and may be tensors, lists, or any
    object with ``__len__`` and ``__getitem__``. Setting a field whose length differs from the
    existing ones raises ``ValueError`` naming the field.

    Args:
        image_size: ``(height, width)`` of the image the instances belong to.
        **fields: initial fields.
    """

    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails. During unpickling and deepcopy ``_fields`` does
        # not exist yet, so it is read from __dict__ to avoid recursing into __getattr__.
        fields = self.__dict__.get("_fields")
        if name.startswith("_") or fields is None or name not in fields:
            known = list(fields) if fields is not None else []
            raise AttributeError(f"Instances has no field '{name}'; it has {known}")
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        n = len(value)
        if self._fields and n != len(self):
            raise ValueError(
                f"Instances field '{name}' has length {n}, but the other fields have length "
                f"{len(self)} ({list(self._fields)})"
            )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        """Return a copy with every tensor field (or field with a ``.to``) moved/cast."""
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            out.set(name, value)
        return out

    def __getitem__(self, item: int | slice | torch.Tensor) -> Instances:
        """Index all fields at once: an int (kept as a length-1 set), a slice, a mask or indices."""
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            item = slice(item, None, len(self)) if item != -1 else slice(item, None)
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if isinstance(value, list) and isinstance(item, torch.Tensor):
                idx = item.nonzero().flatten() if item.dtype == torch.bool else item
                out.set(name, [value[i] for i in idx.tolist()])
            else:
                out.set(name, value[item])
        return out

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        return 0

    def __iter__(self):
        raise NotImplementedError("Instances is not iterable; index it or read its fields")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenate instances of the same image; every element must have the same fields."""
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        names = set(instance_lists[0]._fields)
        for inst in instance_lists[1:]:
            if inst.image_size != image_size:
                raise ValueError(
                    f"Instances.cat: image sizes differ ({image_size} vs {inst.image_size})"
                )
            if set(inst._fields) != names:
                raise ValueError(
                    f"Instances.cat: fields differ ({sorted(names)} vs {sorted(inst._fields)})"
                )
        out = Instances(image_size)
        for name in instance_lists[0]._fields:
            values = [inst.get(name) for inst in instance_lists]
            first = values[0]
            if isinstance(first, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(first, list):
                merged = list(itertools.chain(*values))
            elif hasattr(type(first), "cat"):
                merged = type(first).cat(values)
            else:
                raise ValueError(
                    f"Instances.cat: field '{name}' of type {type(first)} cannot be concatenated"
                )
            out.set(name, merged)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
            for k, v in self._fields.items()
        )
        h, w = self._image_size
        return (
            f"Instances(num_instances={len(self)}, image_height={h}, image_width={w}, "
            f"fields=[{fields}])"
        )
