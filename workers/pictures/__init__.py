"""The product's pictures: the colour overlay of the analysed slice, the level picture (where L3
was found, on sagittal and coronal views) and the text drawn on them."""
