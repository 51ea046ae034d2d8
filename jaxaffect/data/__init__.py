"""The read side of the data flow: record schema, pipelines, clip samplers, augmentation and the
procedural synthetic face videos used by the demo and the learning tests.

Submodules are imported explicitly (`from jaxaffect.data import synthetic`) so that importing the
package does not pull in optional heavy dependencies of individual readers.
"""
