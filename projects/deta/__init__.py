"""DETA (Ouyang-Zhang et al., "NMS strikes back", 2022): two-stage deformable DETR trained with
IoU assignment and object balancing. The detector is not assembled yet; this package holds its
assigners (``assigners.py``), and ``assigndet.ops.ms_deform_attn`` its attention op."""
