"""The product's pictures: the colour overlay of the analysed slice and the text drawn on it."""
