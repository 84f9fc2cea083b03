"""Personas: the YAML a business writes to define a voice bot."""

from voxline.personas.loader import load_persona
from voxline.personas.schema import Persona

__all__ = ["Persona", "load_persona"]
