package sawmill.images
