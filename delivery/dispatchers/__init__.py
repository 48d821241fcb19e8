"""Built-in dispatchers. Each registers through the ``delivery.dispatchers`` entry points."""
