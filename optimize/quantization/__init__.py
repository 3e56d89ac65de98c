"""INT8 building blocks: where the linear layers are, outlier migration, emission, the budget search."""
