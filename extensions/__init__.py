"""Models beyond depth 2: deeper, wider and real networks measured with shallownet's tools."""
