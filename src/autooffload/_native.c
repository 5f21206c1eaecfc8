/* The optional C parts of autooffload: the NumPy-path check of an offloaded call, and the data
 * address of a NumPy array.
 *
 * FastPath. An offloaded function's Python wrapper first calls its FastPath object with the call's own
 * arguments. The object answers True only when the whole decision is already known to be "run
 * the original function on NumPy, nothing else to do": every argument is an exact numpy.ndarray
 * or a passive scalar, no config() block is active in the caller's context (the context variable
 * _config.backend_in_context is None: per thread and per asyncio task), DEBUG logging is known to be
 * off, and the arguments' total bytes are a key of the function's `fast` dict (filled by the
 * Python side only with plain NumPy decisions: no device data, no cold-start bookkeeping, no log
 * file, no xp injection). On True it has also stored the decision as `last_decision` and counted
 * the call. On anything else it answers False and the Python path decides, exactly as without
 * this module. Doing those checks here instead of in Python bytecode is what brings the decorated
 * call of a 1 us NumPy function under 1.3x (issue 2); numba's dispatcher does the same in C.
 *
 * array_address(a). What `a.ctypes.data` gives, in ~40 ns instead of ~900: small host<->device
 * copies are ~15 us, and that difference kept device->host copies of 4-16 KiB 3-5% behind
 * cupy.asnumpy (issue 4).
 *
 * Optional: built when a compiler is present (setup.py marks it optional); without it the
 * pure-Python code does the same work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_PASSIVE 32

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fast;        /* dict: int total bytes -> Decision */
    PyObject *ndarray;     /* numpy.ndarray */
    PyObject *level_cache; /* logging.Logger._cache of the "autooffload" logger, or None */
    PyObject *attrs;       /* the wrapper function's __dict__ (last_decision goes there) */
    PyObject *passive;     /* tuple of types passed over (kept for the references) */
    PyObject *config_backend; /* the ContextVar of the innermost config() block's backend */
    PyTypeObject *passive_types[MAX_PASSIVE];
    getter nbytes_get;     /* ndarray's own nbytes getter (skips the attribute lookup), or NULL */
    void *nbytes_closure;
    Py_ssize_t n_passive;
    Py_ssize_t hits;       /* calls answered True (NumPy calls the Python side did not count) */
} FastPath;

static PyObject *str_nbytes;       /* "nbytes" */
static PyObject *str_last_decision; /* "last_decision" */
static PyObject *level_debug;       /* 10 */

static int
is_passive(FastPath *self, PyTypeObject *t)
{
    for (Py_ssize_t i = 0; i < self->n_passive; i++) {
        if (self->passive_types[i] == t) {
            return 1;
        }
    }
    return 0;
}

/* A tuple of passive scalars (a shape, say) is passive too. */
static int
is_passive_tuple(FastPath *self, PyObject *obj)
{
    if (!PyTuple_CheckExact(obj)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
        if (!is_passive(self, Py_TYPE(PyTuple_GET_ITEM(obj, i)))) {
            return 0;
        }
    }
    return 1;
}

/* The array's nbytes, or -1 (error cleared) if it cannot be had. */
static Py_ssize_t
array_nbytes(FastPath *self, PyObject *array)
{
    PyObject *nbytes = self->nbytes_get != NULL ? self->nbytes_get(array, self->nbytes_closure)
                                                : PyObject_GetAttr(array, str_nbytes);
    if (nbytes == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t b = PyLong_AsSsize_t(nbytes);
    Py_DECREF(nbytes);
    if (b < 0) {
        PyErr_Clear();
        return -1;
    }
    return b;
}

static PyObject *
fastpath_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FastPath *self = (FastPath *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL) {
        n += PyTuple_GET_SIZE(kwnames);
    }
    /* A config() block active in this context (this task's or thread's own, or one inherited
       with a copied context) decides: only the Python path reads it. ContextVar reads are cached
       per thread and context, a few ns. */
    PyObject *config_backend;
    if (PyContextVar_Get(self->config_backend, NULL, &config_backend) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (config_backend != Py_None) {
        Py_XDECREF(config_backend);
        Py_RETURN_FALSE;
    }
    Py_DECREF(config_backend);
    if (self->level_cache != Py_None) {
        /* logging fills this dict on isEnabledFor and clears it in place when levels change:
           only a cached False proves DEBUG is off; a missing entry goes to Python, which fills it. */
        PyObject *debug_on = PyDict_GetItemWithError(self->level_cache, level_debug);
        if (debug_on != Py_False) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
    }
    Py_ssize_t total = 0;
    PyTypeObject *ndarray = (PyTypeObject *)self->ndarray;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTypeObject *t = Py_TYPE(args[i]);
        if (t == ndarray) {
            Py_ssize_t b = array_nbytes(self, args[i]);
            if (b < 0) {
                Py_RETURN_FALSE;
            }
            total += b;
        }
        else if (!is_passive(self, t) && !is_passive_tuple(self, args[i])) {
            Py_RETURN_FALSE;
        }
    }
    PyObject *key = PyLong_FromSsize_t(total);
    if (key == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    PyObject *decision = PyDict_GetItemWithError(self->fast, key); /* borrowed */
    Py_DECREF(key);
    if (decision == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    Py_INCREF(decision); /* the store below may drop the dict's last other reference */
    int failed = PyDict_SetItem(self->attrs, str_last_decision, decision);
    Py_DECREF(decision);
    if (failed) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    self->hits++;
    Py_RETURN_TRUE;
}

static PyObject *
fastpath_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fast", "ndarray", "passive", "level_cache", "attrs", "config_backend", NULL};
    PyObject *fast, *ndarray, *passive, *level_cache, *attrs, *config_backend;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!OO!O!:FastPath", kwlist, &PyDict_Type, &fast,
                                     &PyType_Type, &ndarray, &PyTuple_Type, &passive, &level_cache,
                                     &PyDict_Type, &attrs, &PyContextVar_Type, &config_backend)) {
        return NULL;
    }
    if (level_cache != Py_None && !PyDict_CheckExact(level_cache)) {
        PyErr_Format(PyExc_TypeError, "FastPath: level_cache must be a dict or None, not %.100s",
                     Py_TYPE(level_cache)->tp_name);
        return NULL;
    }
    Py_ssize_t n_passive = PyTuple_GET_SIZE(passive);
    if (n_passive > MAX_PASSIVE) {
        PyErr_Format(PyExc_ValueError, "FastPath: at most %d passive types, got %zd", MAX_PASSIVE, n_passive);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n_passive; i++) {
        if (!PyType_Check(PyTuple_GET_ITEM(passive, i))) {
            PyErr_SetString(PyExc_TypeError, "FastPath: passive must be a tuple of types");
            return NULL;
        }
    }
    FastPath *self = (FastPath *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = fastpath_vectorcall;
    self->fast = Py_NewRef(fast);
    self->ndarray = Py_NewRef(ndarray);
    self->passive = Py_NewRef(passive);
    self->level_cache = Py_NewRef(level_cache);
    self->attrs = Py_NewRef(attrs);
    self->config_backend = Py_NewRef(config_backend);
    self->n_passive = n_passive;
    for (Py_ssize_t i = 0; i < n_passive; i++) {
        self->passive_types[i] = (PyTypeObject *)PyTuple_GET_ITEM(passive, i);
    }
    self->hits = 0;
    /* ndarray.__dict__["nbytes"] is a getset descriptor: call its C getter directly. */
    self->nbytes_get = NULL;
    self->nbytes_closure = NULL;
    PyObject *descr = PyDict_GetItemWithError(((PyTypeObject *)ndarray)->tp_dict, str_nbytes);
    if (descr != NULL && Py_IS_TYPE(descr, &PyGetSetDescr_Type)) {
        PyGetSetDef *def = ((PyGetSetDescrObject *)descr)->d_getset;
        self->nbytes_get = def->get;
        self->nbytes_closure = def->closure;
    }
    PyErr_Clear();
    return (PyObject *)self;
}

static int
fastpath_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fast);
    Py_VISIT(self->ndarray);
    Py_VISIT(self->passive);
    Py_VISIT(self->level_cache);
    Py_VISIT(self->attrs);
    Py_VISIT(self->config_backend);
    return 0;
}

static int
fastpath_clear(FastPath *self)
{
    Py_CLEAR(self->fast);
    Py_CLEAR(self->ndarray);
    Py_CLEAR(self->passive);
    Py_CLEAR(self->level_cache);
    Py_CLEAR(self->attrs);
    Py_CLEAR(self->config_backend);
    return 0;
}

static void
fastpath_dealloc(FastPath *self)
{
    PyObject_GC_UnTrack(self);
    fastpath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef fastpath_members[] = {
    {"hits", T_PYSSIZET, offsetof(FastPath, hits), READONLY, "calls answered True"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(FastPath, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autooffload._native.FastPath",
    .tp_doc = "FastPath(fast, ndarray, passive, level_cache, attrs, config_backend): the NumPy-path check of one offloaded function",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = fastpath_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FastPath, vectorcall),
    .tp_traverse = (traverseproc)fastpath_traverse,
    .tp_clear = (inquiry)fastpath_clear,
    .tp_dealloc = (destructor)fastpath_dealloc,
    .tp_members = fastpath_members,
};

/* numpy's PyArrayObject_fields begins so; PyArray_DATA in every compiled NumPy extension reads
   this field, which makes it part of NumPy's ABI. */
typedef struct {
    PyObject_HEAD
    char *data;
} ArrayHead;

static PyTypeObject *ndarray_type; /* numpy.ndarray, looked up at import */

static PyObject *
array_address(PyObject *module, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, ndarray_type)) {
        PyErr_Format(PyExc_TypeError, "array_address expects a numpy.ndarray; got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    return PyLong_FromVoidPtr(((ArrayHead *)arg)->data);
}

static PyMethodDef module_methods[] = {
    {"array_address", array_address, METH_O, "array_address(a) -> a.ctypes.data, faster"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "autooffload._native",
    .m_doc = "The optional C parts of autooffload: the NumPy-path check of offloaded calls, array addresses.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    str_nbytes = PyUnicode_InternFromString("nbytes");
    str_last_decision = PyUnicode_InternFromString("last_decision");
    level_debug = PyLong_FromLong(10);
    if (str_nbytes == NULL || str_last_decision == NULL || level_debug == NULL) {
        return NULL;
    }
    if (PyType_Ready(&FastPathType) < 0) {
        return NULL;
    }
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) {
        return NULL;
    }
    ndarray_type = (PyTypeObject *)PyObject_GetAttrString(numpy, "ndarray");
    Py_DECREF(numpy);
    if (ndarray_type == NULL) {
        return NULL;
    }
    if (!PyType_Check(ndarray_type)) {
        PyErr_SetString(PyExc_ImportError, "numpy.ndarray is not a type");
        return NULL;
    }
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
