"""What the registry decides and says, as plain functions of recorded figures: promotion
(promotion.py), the version and model descriptions (summary.py), and the verdict of a rebuilt
adapter against the recorded one (reproduction.py).
"""
