"""Anatomy modifiers and painters of the finding kinds, one module per organ system or device group
(:mod:`fedmrg.data.synthetic.render` maps each kind to them)."""
