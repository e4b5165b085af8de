"""Patient values from outside the image (height, weight, sex): their plausibility limits, the
site table, and the order in which the node takes them (header → HL7 feed → site table).
"""
