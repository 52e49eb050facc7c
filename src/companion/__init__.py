"""companion: the code behind the book "RL in Name Only?".

Every figure and number in the book comes from this package.
"""

__version__ = "0.1.0"
