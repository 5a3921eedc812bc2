"""Curvature of any model + loss: Hessian-vector products, top eigenvalues, trace, dense Hessian.

    op = HessianOperator(model, loss_fn, (X, Y))      # H of the mean loss over (X, Y), chunked
    result = top_eigenvalue(op)                       # sharpness: result.value, .residual, .n_hvp
    result = top_eigenvalue(op, result.vector)        # warm start after the parameters moved
    tracker = EigenTracker(k=1); tracker.solve(op)    # warm starts along a trajectory, done for you
"""

from shallownet.curvature.dense import dense_hessian
from shallownet.curvature.eigen import EigenResult, lanczos, power_iteration, top_eigenvalue
from shallownet.curvature.operators import METHODS, HessianOperator, flat_parameters, trainable_parameters
from shallownet.curvature.trace import TraceEstimate, hutchinson
from shallownet.curvature.tracking import EigenTracker

__all__ = [
    "METHODS",
    "EigenResult",
    "EigenTracker",
    "HessianOperator",
    "TraceEstimate",
    "dense_hessian",
    "flat_parameters",
    "hutchinson",
    "lanczos",
    "power_iteration",
    "top_eigenvalue",
    "trainable_parameters",
]
