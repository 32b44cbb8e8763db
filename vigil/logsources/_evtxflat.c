/*
 * One EVTX record, as the evtx package renders it in JSON, straight to Vigil's flat event.
 *
 * The pure-Python route (orjson.loads, then windows.from_evtx_json) spends about twice the
 * parser's own time per record building dictionaries nobody reads (Version, Level, Execution,
 * Security...). This walks the JSON text once, creates Python objects only for what the flat
 * event keeps, and fills the event the way windows.windows_event does, in the same key order.
 *
 * Only the shapes the evtx package writes for EventData records are handled here. Anything
 * else (UserData, nested values, floats, a timestamp not already in ECS form, malformed text)
 * returns None, and the caller takes the Python route, which owns every error message. The
 * parser never reads past the end of the text and bounds its nesting, because an EVTX file is
 * hostile input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_FIELDS 512
#define SHORT_STRING 64
#define NAME_CACHE_SIZE 1024

typedef struct {
    const char *p;
    const char *end;
    int unsupported; /* not a shape we handle: the caller falls back to Python */
    int latin1;      /* the text is Latin-1 bytes (a one-byte str), not UTF-8 */
} Cursor;

/* Short strings (field names, channels, providers, computers) recur in every record: keep one
 * object per distinct text so that neither the allocation nor the hash is paid again. */
typedef struct {
    size_t key;
    Py_ssize_t length;
    PyObject *text;
    /* What build_event worked out for a field of this name, and the reserved-name set and the
     * copies table it was worked out with: held, so that neither address can be reused. */
    PyObject *hidden_for;
    int hidden;
    PyObject *copies_for;
    PyObject *copy; /* the name's ECS copy in copies_for, or NULL */
} NameSlot;

static NameSlot name_cache[NAME_CACHE_SIZE];

static PyObject *empty_string, *comma, *equals;
static PyObject *event_data_prefix;
static PyObject *key_log_file_path, *key_timestamp, *key_event_provider, *key_provider_name,
    *key_winlog_provider_name, *key_computer, *key_host_name, *key_record_id;

static void skip_space(Cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

static int take(Cursor *c, char wanted)
{
    skip_space(c);
    if (c->p < c->end && *c->p == wanted) {
        c->p++;
        return 1;
    }
    return 0;
}

static int peek(Cursor *c)
{
    skip_space(c);
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

static int hex_value(const char *p, unsigned int *out)
{
    unsigned int value = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        value <<= 4;
        if (ch >= '0' && ch <= '9')
            value |= (unsigned int)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            value |= (unsigned int)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            value |= (unsigned int)(ch - 'A' + 10);
        else
            return 0;
    }
    *out = value;
    return 1;
}

/* Whether the escape at p is one JSON allows (a lone surrogate is left to the decoder). */
static int escape_valid(const char *p, const char *end)
{
    unsigned int code;
    if (end - p < 2)
        return 0;
    if (p[1] == 'u')
        return end - p >= 6 && hex_value(p + 2, &code);
    return strchr("\"\\/bfnrt", p[1]) != NULL && p[1] != '\0';
}

/* Finds the end of the string that starts at c->p (on its opening quote). Sets *start and
 * *length to the raw bytes between the quotes and *escaped when they hold a backslash. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WORD_SCAN 1
#define LOW7 0x7F7F7F7F7F7F7F7FULL

/* The high bit of each byte of x that is zero, and of no other byte (no borrow between bytes,
 * unlike the shorter test). */
static inline uint64_t zero_bytes(uint64_t x)
{
    return ~(((x & LOW7) + LOW7) | x | LOW7);
}

/* Offset of the first byte of the 8 at p that is a quote, a backslash or a control character,
 * or 8 when there is none. */
static inline int first_special(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    uint64_t found = zero_bytes(v ^ 0x2222222222222222ULL) | zero_bytes(v ^ 0x5C5C5C5C5C5C5C5CULL) |
                     zero_bytes(v & 0xE0E0E0E0E0E0E0E0ULL);
    return found ? __builtin_ctzll(found) / 8 : 8;
}
#endif

static int string_span(Cursor *c, const char **start, Py_ssize_t *length, int *escaped)
{
    const char *p = c->p + 1;
    *escaped = 0;
    *start = p;
    while (p < c->end) {
#ifdef WORD_SCAN
        /* Most of a record's text is string content: step over it eight bytes at a time. */
        if (c->end - p >= 8) {
            int offset = first_special(p);
            p += offset;
            if (offset == 8)
                continue;
        }
#endif
        char ch = *p;
        if (ch == '"') {
            *length = p - *start;
            c->p = p + 1;
            return 1;
        }
        if (ch == '\\') {
            *escaped = 1;
            if (!escape_valid(p, c->end))
                break;
            p += p + 1 < c->end && p[1] == 'u' ? 6 : 2;
            continue;
        }
        if ((unsigned char)ch < 0x20)
            break; /* a raw control character: not JSON */
        p++;
    }
    c->unsupported = 1;
    return 0;
}

static char *put_utf8(char *out, unsigned int code)
{
    if (code < 0x80) {
        *out++ = (char)code;
    } else if (code < 0x800) {
        *out++ = (char)(0xC0 | (code >> 6));
        *out++ = (char)(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
        *out++ = (char)(0xE0 | (code >> 12));
        *out++ = (char)(0x80 | ((code >> 6) & 0x3F));
        *out++ = (char)(0x80 | (code & 0x3F));
    } else {
        *out++ = (char)(0xF0 | (code >> 18));
        *out++ = (char)(0x80 | ((code >> 12) & 0x3F));
        *out++ = (char)(0x80 | ((code >> 6) & 0x3F));
        *out++ = (char)(0x80 | (code & 0x3F));
    }
    return out;
}

/* The raw bytes of a string as a str, read as the cursor's text is encoded. */
static PyObject *decoded(const Cursor *c, const char *raw, Py_ssize_t length)
{
    return c->latin1 ? PyUnicode_DecodeLatin1(raw, length, NULL)
                     : PyUnicode_DecodeUTF8(raw, length, "strict");
}

/* The JSON escapes of raw[0:length] resolved into UTF-8; a lone surrogate is unsupported. */
static PyObject *unescaped_string(Cursor *c, const char *raw, Py_ssize_t length)
{
    /* An escape never grows: \uXXXX (6 bytes) is at most 3 bytes of UTF-8, a pair (12) is 4.
     * A Latin-1 byte above 0x7F becomes two. */
    size_t room = (size_t)length * (c->latin1 ? 2 : 1);
    char *buffer = PyMem_Malloc(room > 0 ? room : 1);
    if (buffer == NULL)
        return PyErr_NoMemory();
    const char *p = raw, *end = raw + length;
    char *out = buffer;
    while (p < end) {
        if (*p != '\\') {
            unsigned char byte = (unsigned char)*p++;
            if (byte < 0x80 || !c->latin1)
                *out++ = (char)byte;
            else
                out = put_utf8(out, byte);
            continue;
        }
        if (p + 1 >= end)
            goto unsupported;
        char kind = p[1];
        p += 2;
        switch (kind) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '/': *out++ = '/'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned int code, low;
            if (end - p < 4 || !hex_value(p, &code))
                goto unsupported;
            p += 4;
            if (code >= 0xD800 && code <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex_value(p + 2, &low) ||
                    low < 0xDC00 || low > 0xDFFF)
                    goto unsupported;
                p += 6;
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
            } else if (code >= 0xDC00 && code <= 0xDFFF) {
                goto unsupported;
            }
            out = put_utf8(out, code);
            break;
        }
        default:
            goto unsupported;
        }
    }
    PyObject *text = PyUnicode_DecodeUTF8(buffer, out - buffer, "strict");
    PyMem_Free(buffer);
    return text;
unsupported:
    PyMem_Free(buffer);
    c->unsupported = 1;
    return NULL;
}

static PyObject *cached_name(const Cursor *c, const char *raw, Py_ssize_t length, NameSlot **where)
{
    if (where != NULL)
        *where = NULL;
    size_t key = (size_t)length; /* unsigned: its overflow wraps, as a hash should */
    unsigned char high = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        key = key * 1000003u ^ (unsigned char)raw[i];
        high |= (unsigned char)raw[i];
    }
    /* The cache holds texts by their UTF-8 bytes; Latin-1 bytes above 0x7F are other texts. */
    if (c->latin1 && high >= 0x80)
        return decoded(c, raw, length);
    NameSlot *slot = &name_cache[key % NAME_CACHE_SIZE];
    if (slot->text != NULL && slot->key == key && slot->length == length &&
        memcmp(PyUnicode_AsUTF8(slot->text), raw, (size_t)length) == 0) {
        Py_INCREF(slot->text);
        if (where != NULL)
            *where = slot;
        return slot->text;
    }
    PyObject *text = PyUnicode_DecodeUTF8(raw, length, "strict");
    if (text == NULL)
        return NULL;
    if (PyObject_Hash(text) == -1) {
        Py_DECREF(text);
        return NULL;
    }
    Py_XSETREF(slot->text, Py_NewRef(text));
    slot->key = key;
    slot->length = length;
    Py_CLEAR(slot->hidden_for);
    Py_CLEAR(slot->copies_for);
    Py_CLEAR(slot->copy);
    if (where != NULL)
        *where = slot;
    return text;
}

/* The string at c->p as a str (new reference), or NULL: unsupported, or an error is set. */
static PyObject *read_string(Cursor *c, int cache)
{
    const char *raw;
    Py_ssize_t length;
    int escaped;
    if (!string_span(c, &raw, &length, &escaped))
        return NULL;
    if (escaped)
        return unescaped_string(c, raw, length);
    if (cache && length <= SHORT_STRING)
        return cached_name(c, raw, length, NULL);
    return decoded(c, raw, length);
}

/* Whether a key's raw bytes are the literal. */
static int key_is(const char *raw, Py_ssize_t length, const char *literal)
{
    size_t size = strlen(literal);
    return (size_t)length == size && memcmp(raw, literal, size) == 0;
}

/* The key at c->p, without escapes, and the colon after it. */
static int read_key(Cursor *c, const char **raw, Py_ssize_t *length)
{
    int escaped;
    if (peek(c) != '"' || !string_span(c, raw, length, &escaped) || escaped || !take(c, ':')) {
        c->unsupported = 1;
        return 0;
    }
    return 1;
}

static PyObject *read_number(Cursor *c)
{
    const char *start = c->p;
    const char *p = start;
    if (p < c->end && *p == '-')
        p++;
    const char *digits = p;
    while (p < c->end && *p >= '0' && *p <= '9')
        p++;
    if (p == digits || (p - digits > 1 && *digits == '0') ||
        (p < c->end && (*p == '.' || *p == 'e' || *p == 'E'))) {
        c->unsupported = 1; /* floats are rare in EVTX, leading zeros invalid: Python's route */
        return NULL;
    }
    /* orjson reads integers that fit 64 bits (signed when negative) as int, others as float:
     * those take its route. */
    unsigned long long value = 0;
    for (const char *d = digits; d < p; d++) {
        unsigned int digit = (unsigned int)(*d - '0');
        if (value > (ULLONG_MAX - digit) / 10) {
            c->unsupported = 1;
            return NULL;
        }
        value = value * 10 + digit;
    }
    c->p = p;
    if (*start != '-')
        return PyLong_FromUnsignedLongLong(value);
    if (value > (unsigned long long)LLONG_MAX + 1) {
        c->unsupported = 1;
        return NULL;
    }
    return PyLong_FromLongLong(value == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN
                                                                           : -(long long)value);
}

static int literal_follows(Cursor *c, const char *word)
{
    size_t size = strlen(word);
    if ((size_t)(c->end - c->p) >= size && memcmp(c->p, word, size) == 0) {
        c->p += size;
        return 1;
    }
    return 0;
}

/* A string, number, true, false or null (Py_None). Objects and arrays are not scalars. */
static PyObject *read_scalar(Cursor *c, int cache)
{
    int ch = peek(c);
    if (ch == '"')
        return read_string(c, cache);
    if (ch == '-' || (ch >= '0' && ch <= '9'))
        return read_number(c);
    if (literal_follows(c, "true"))
        return Py_NewRef(Py_True);
    if (literal_follows(c, "false"))
        return Py_NewRef(Py_False);
    if (literal_follows(c, "null"))
        return Py_NewRef(Py_None);
    c->unsupported = 1;
    return NULL;
}

static int skip_digits(Cursor *c)
{
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    return c->p > start;
}

/* A JSON number without exponent: -?(0|[1-9][0-9]*)(.[0-9]+)? */
static int skip_number(Cursor *c)
{
    if (c->p < c->end && *c->p == '-')
        c->p++;
    const char *digits = c->p;
    if (!skip_digits(c) || (c->p - digits > 1 && *digits == '0'))
        goto invalid;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!skip_digits(c))
            goto invalid;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E'))
        goto invalid; /* the evtx package writes none; orjson refuses some (1E544) */
    return 1;
invalid:
    c->unsupported = 1;
    return 0;
}

static int skip_value(Cursor *c, int depth)
{
    if (depth > MAX_DEPTH) {
        c->unsupported = 1;
        return 0;
    }
    int ch = peek(c);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        if (take(c, close))
            return 1;
        do {
            if (ch == '{') {
                const char *raw;
                Py_ssize_t length;
                int escaped;
                if (peek(c) != '"' || !string_span(c, &raw, &length, &escaped) || !take(c, ':')) {
                    c->unsupported = 1;
                    return 0;
                }
            }
            if (!skip_value(c, depth + 1))
                return 0;
        } while (take(c, ','));
        if (!take(c, close)) {
            c->unsupported = 1;
            return 0;
        }
        return 1;
    }
    if (ch == '"') {
        const char *raw;
        Py_ssize_t length;
        int escaped;
        return string_span(c, &raw, &length, &escaped);
    }
    if (ch == '-' || (ch >= '0' && ch <= '9'))
        return skip_number(c);
    if (literal_follows(c, "true") || literal_follows(c, "false") || literal_follows(c, "null"))
        return 1;
    c->unsupported = 1;
    return 0;
}

/* A list of scalars, as the evtx package writes unnamed <Data> elements. */
static PyObject *read_scalar_list(Cursor *c)
{
    c->p++; /* '[' */
    PyObject *items = PyList_New(0);
    if (items == NULL || take(c, ']'))
        return items;
    do {
        PyObject *item = read_scalar(c, 0);
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(item);
    } while (take(c, ','));
    if (!take(c, ']')) {
        c->unsupported = 1;
        Py_DECREF(items);
        return NULL;
    }
    return items;
}

/* A scalar or a list of scalars. */
static PyObject *read_plain(Cursor *c)
{
    return peek(c) == '[' ? read_scalar_list(c) : read_scalar(c, 0);
}

/* The "#text" member of an element object ({"#attributes": ..., "#text": v}), or `missing`. */
static PyObject *read_element_text(Cursor *c, PyObject *missing)
{
    c->p++; /* '{' */
    PyObject *text = NULL;
    if (!take(c, '}')) {
        do {
            const char *raw;
            Py_ssize_t length;
            if (!read_key(c, &raw, &length))
                goto failed;
            if (key_is(raw, length, "#text")) {
                Py_XDECREF(text);
                if ((text = read_plain(c)) == NULL)
                    goto failed;
            } else if (!skip_value(c, 1)) {
                goto failed;
            }
        } while (take(c, ','));
        if (!take(c, '}')) {
            c->unsupported = 1;
            goto failed;
        }
    }
    return text != NULL ? text : Py_NewRef(missing);
failed:
    Py_XDECREF(text);
    return NULL;
}

/* The "#attributes" member's `name` attribute as a str, or None; `cache` for recurring texts. */
static PyObject *read_attribute(Cursor *c, const char *name, int cache)
{
    PyObject *value = Py_NewRef(Py_None);
    if (peek(c) == 'n' && literal_follows(c, "null"))
        return value;
    if (!take(c, '{'))
        goto unsupported;
    if (take(c, '}'))
        return value;
    do {
        const char *raw;
        Py_ssize_t length;
        if (!read_key(c, &raw, &length))
            goto failed;
        if (!key_is(raw, length, "#attributes")) {
            if (!skip_value(c, 1))
                goto failed;
            continue;
        }
        Py_SETREF(value, Py_NewRef(Py_None)); /* the last #attributes is the one kept */
        if (!take(c, '{'))
            goto unsupported;
        if (take(c, '}'))
            continue;
        do {
            if (!read_key(c, &raw, &length))
                goto failed;
            if (key_is(raw, length, name)) {
                if (peek(c) != '"' && peek(c) != 'n')
                    goto unsupported; /* str() of a number: Python's route */
                Py_SETREF(value, read_scalar(c, cache));
                if (value == NULL)
                    return NULL;
            } else if (!skip_value(c, 2)) {
                goto failed;
            }
        } while (take(c, ','));
        if (!take(c, '}'))
            goto unsupported;
    } while (take(c, ','));
    if (!take(c, '}'))
        goto unsupported;
    return value;
unsupported:
    c->unsupported = 1;
failed:
    Py_XDECREF(value);
    return NULL;
}

typedef struct {
    PyObject *event_id, *channel, *provider, *computer, *created, *record_id;
} System;

static void system_clear(System *s)
{
    Py_CLEAR(s->event_id);
    Py_CLEAR(s->channel);
    Py_CLEAR(s->provider);
    Py_CLEAR(s->computer);
    Py_CLEAR(s->created);
    Py_CLEAR(s->record_id);
}

/* A System text field (Channel, Computer): a string or null; anything else is Python's. */
static PyObject *read_text(Cursor *c)
{
    int ch = peek(c);
    if (ch != '"' && ch != 'n') {
        c->unsupported = 1;
        return NULL;
    }
    return read_scalar(c, 1);
}

static int read_system(Cursor *c, System *s)
{
    if (!take(c, '{')) {
        c->unsupported = 1;
        return 0;
    }
    if (take(c, '}'))
        return 1;
    do {
        const char *raw;
        Py_ssize_t length;
        PyObject **slot = NULL, *value;
        if (!read_key(c, &raw, &length))
            return 0;
        if (key_is(raw, length, "EventID")) {
            slot = &s->event_id;
            value = peek(c) == '{' ? read_element_text(c, Py_None) : read_scalar(c, 0);
            if (value != NULL && value != Py_None && !PyLong_CheckExact(value)) {
                Py_DECREF(value); /* int("4688") and the like: Python's route */
                c->unsupported = 1;
                return 0;
            }
        } else if (key_is(raw, length, "Channel")) {
            slot = &s->channel;
            value = read_text(c);
        } else if (key_is(raw, length, "Computer")) {
            slot = &s->computer;
            value = read_text(c);
        } else if (key_is(raw, length, "EventRecordID")) {
            slot = &s->record_id;
            value = read_scalar(c, 0);
        } else if (key_is(raw, length, "Provider")) {
            slot = &s->provider;
            value = read_attribute(c, "Name", 1);
        } else if (key_is(raw, length, "TimeCreated")) {
            slot = &s->created;
            value = read_attribute(c, "SystemTime", 0);
        } else {
            if (!skip_value(c, 2))
                return 0;
            continue;
        }
        if (value == NULL)
            return 0;
        Py_XSETREF(*slot, value);
    } while (take(c, ','));
    if (!take(c, '}')) {
        c->unsupported = 1;
        return 0;
    }
    return 1;
}

typedef struct {
    Py_ssize_t count;
    PyObject *names[MAX_FIELDS];
    PyObject *values[MAX_FIELDS];
    NameSlot *slots[MAX_FIELDS]; /* the name's slot in the name cache, or NULL */
} Fields;

static void fields_clear(Fields *f)
{
    for (Py_ssize_t i = 0; i < f->count; i++) {
        Py_DECREF(f->names[i]);
        Py_DECREF(f->values[i]);
    }
    f->count = 0;
}

static int read_event_data(Cursor *c, Fields *f)
{
    if (peek(c) == 'n' && literal_follows(c, "null"))
        return 1;
    if (!take(c, '{')) {
        c->unsupported = 1;
        return 0;
    }
    if (take(c, '}'))
        return 1;
    do {
        const char *raw;
        Py_ssize_t length;
        int escaped;
        if (peek(c) != '"' || !string_span(c, &raw, &length, &escaped) || escaped ||
            !take(c, ':') || f->count >= MAX_FIELDS) {
            c->unsupported = 1;
            return 0;
        }
        if (key_is(raw, length, "#attributes")) {
            if (!skip_value(c, 2))
                return 0;
            continue;
        }
        NameSlot *slot = NULL;
        PyObject *name =
            length <= SHORT_STRING ? cached_name(c, raw, length, &slot) : decoded(c, raw, length);
        if (name == NULL)
            return 0;
        PyObject *value;
        int ch = peek(c);
        if (ch == '{')
            value = read_element_text(c, empty_string);
        else if (ch == '[')
            value = read_scalar_list(c);
        else
            value = read_scalar(c, 0);
        if (value == NULL) {
            Py_DECREF(name);
            return 0;
        }
        if (value == Py_None) {
            Py_SETREF(value, Py_NewRef(empty_string));
        }
        f->names[f->count] = name;
        f->slots[f->count] = slot;
        f->values[f->count] = value;
        f->count++;
    } while (take(c, ','));
    if (!take(c, '}')) {
        c->unsupported = 1;
        return 0;
    }
    return 1;
}

/* {"Event": {"#attributes": ..., "System": {...}, "EventData": {...}}} */
static int read_document(Cursor *c, System *s, Fields *f)
{
    const char *raw;
    Py_ssize_t length;
    if (!take(c, '{') || !read_key(c, &raw, &length) || !key_is(raw, length, "Event") ||
        !take(c, '{')) {
        c->unsupported = 1;
        return 0;
    }
    int seen_system = 0;
    if (!take(c, '}')) {
        do {
            if (!read_key(c, &raw, &length))
                return 0;
            if (key_is(raw, length, "System")) {
                if (seen_system++ || !read_system(c, s))
                    return 0;
            } else if (key_is(raw, length, "EventData")) {
                if (f->count || !read_event_data(c, f))
                    return 0;
            } else if (key_is(raw, length, "UserData")) {
                c->unsupported = 1; /* its inner element's fields: Python's route */
                return 0;
            } else if (!skip_value(c, 2)) {
                return 0;
            }
        } while (take(c, ','));
    }
    if (!take(c, '}') || !take(c, '}') || !seen_system) {
        c->unsupported = 1;
        return 0;
    }
    skip_space(c);
    if (c->p != c->end) {
        c->unsupported = 1;
        return 0;
    }
    return 1;
}

/* Windows SystemTime as the evtx package writes it is already ECS-shaped:
 * 2019-07-29T21:32:55.583667Z. Any other form goes through Python's utc_timestamp. */
static int ecs_shaped(PyObject *created)
{
    if (!PyUnicode_Check(created) || PyUnicode_GET_LENGTH(created) != 27)
        return 0;
    return PyUnicode_READ_CHAR(created, 10) == 'T' && PyUnicode_READ_CHAR(created, 19) == '.' &&
           PyUnicode_READ_CHAR(created, 26) == 'Z';
}

static int set(PyObject *event, PyObject *key, PyObject *value)
{
    return PyDict_SetItem(event, key, value);
}

/* A text of ASCII digits only ("547", "0547"), which int(value) reads in base 10. */
static int decimal_digits(PyObject *value)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (length == 0 || !PyUnicode_IS_ASCII(value))
        return 0;
    const char *digits = (const char *)PyUnicode_1BYTE_DATA(value);
    for (Py_ssize_t i = 0; i < length; i++)
        if (digits[i] < '0' || digits[i] > '9')
            return 0;
    return 1;
}

/* windows.number_of: "0x1fc" as 508, as int(value, 16) reads it, "547" as 547; any other value
 * as it is. Returns a new reference, or NULL on an error other than the text not being a
 * number. */
static PyObject *number_of(PyObject *value)
{
    if (!PyUnicode_Check(value))
        return Py_NewRef(value);
    if (PyUnicode_GET_LENGTH(value) < 2 || PyUnicode_READ_CHAR(value, 0) != '0' ||
        (PyUnicode_READ_CHAR(value, 1) != 'x' && PyUnicode_READ_CHAR(value, 1) != 'X'))
        return decimal_digits(value) ? PyLong_FromUnicodeObject(value, 10) : Py_NewRef(value);
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (length > 2 && length <= 18 && PyUnicode_IS_ASCII(value)) {
        /* The usual pid: up to 16 plain hex digits, read here without a copy of the text. */
        const char *digits = (const char *)PyUnicode_1BYTE_DATA(value);
        unsigned long long total = 0;
        Py_ssize_t i = 2;
        for (; i < length; i++) {
            char d = digits[i];
            int nibble = d >= '0' && d <= '9'   ? d - '0'
                         : d >= 'a' && d <= 'f' ? d - 'a' + 10
                         : d >= 'A' && d <= 'F' ? d - 'A' + 10
                                                : -1;
            if (nibble < 0)
                break;
            total = total << 4 | (unsigned long long)nibble;
        }
        if (i == length)
            return PyLong_FromUnsignedLongLong(total);
    }
    PyObject *number = PyLong_FromUnicodeObject(value, 16); /* underscores, other digits */
    if (number == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        return Py_NewRef(value);
    }
    return number;
}

static int set_copy(PyObject *event, PyObject *key, PyObject *value, PyObject *numbers)
{
    if (PySet_GET_SIZE(numbers) == 0)
        return set(event, key, value);
    int wanted = PySet_Contains(numbers, key);
    if (wanted <= 0)
        return wanted < 0 ? -1 : set(event, key, value);
    PyObject *number = number_of(value);
    if (number == NULL)
        return -1;
    int done = set(event, key, number);
    Py_DECREF(number);
    return done;
}

/* windows.base_name: the text after the last backslash or slash; NULL with no error set when
 * that is empty or the value is not a str. */
static PyObject *base_name(PyObject *path)
{
    if (!PyUnicode_Check(path))
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(path);
    Py_ssize_t backslash = PyUnicode_FindChar(path, '\\', 0, length, -1);
    Py_ssize_t slash = PyUnicode_FindChar(path, '/', 0, length, -1);
    if (backslash == -2 || slash == -2)
        return NULL;
    Py_ssize_t start = (backslash > slash ? backslash : slash) + 1;
    return start < length ? PyUnicode_Substring(path, start, length) : NULL;
}

/* The ECS names of the copied paths (windows_event's loop over profile.names). */
static int add_names(PyObject *event, PyObject *names)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *pair = PyTuple_GET_ITEM(names, i);
        PyObject *path = PyDict_GetItemWithError(event, PyTuple_GET_ITEM(pair, 0));
        if (path == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        PyObject *name = base_name(path);
        if (name == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        int done = set(event, PyTuple_GET_ITEM(pair, 1), name);
        Py_DECREF(name);
        if (done < 0)
            return -1;
    }
    return 0;
}

/* windows._add_hashes: "SHA1=...,MD5=..." split as text.split(",") and part.partition("="). */
static int add_hashes(PyObject *event, PyObject *field, PyObject *keys)
{
    PyObject *text = PyDict_GetItemWithError(event, field);
    if (text == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyUnicode_Check(text))
        return 0;
    PyObject *parts = PyUnicode_Split(text, comma, -1);
    if (parts == NULL)
        return -1;
    int status = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts) && status == 0; i++) {
        PyObject *split = PyUnicode_Partition(PyList_GET_ITEM(parts, i), equals);
        if (split == NULL) {
            status = -1;
            break;
        }
        PyObject *value = PyTuple_GET_ITEM(split, 2);
        PyObject *key = PyDict_GetItemWithError(keys, PyTuple_GET_ITEM(split, 0));
        if (key == NULL && PyErr_Occurred())
            status = -1;
        else if (key != NULL && PyUnicode_GET_LENGTH(value) > 0)
            status = set(event, key, value);
        Py_DECREF(split);
    }
    Py_DECREF(parts);
    return status;
}

/* The flat event, built as windows.windows_event builds it. */
static PyObject *build_event(System *s, Fields *f, PyObject *path, PyObject *profile,
                             PyObject *reserved)
{
    PyObject *copies = PyTuple_GET_ITEM(profile, 0);
    PyObject *scalars = PyTuple_GET_ITEM(profile, 1);
    PyObject *lists = PyTuple_GET_ITEM(profile, 2);
    PyObject *finish = PyTuple_GET_ITEM(profile, 3);
    PyObject *numbers = PyTuple_GET_ITEM(profile, 4);
    PyObject *names = PyTuple_GET_ITEM(profile, 5);
    PyObject *hash_field = PyTuple_GET_ITEM(profile, 6);
    PyObject *hash_keys = PyTuple_GET_ITEM(profile, 7);
    /* Sized up front: growing a dict of about 40 keys from empty rehashes it three times. */
    PyObject *event = _PyDict_NewPresized(f->count * 3 / 2 + 10 + PyTuple_GET_SIZE(scalars) +
                                          PyTuple_GET_SIZE(lists));
    if (event == NULL)
        return NULL;
    Py_ssize_t copied[MAX_FIELDS];
    PyObject *copy_keys[MAX_FIELDS];
    Py_ssize_t copy_count = 0;
    for (Py_ssize_t i = 0; i < f->count; i++) {
        PyObject *name = f->names[i];
        NameSlot *slot = f->slots[i];
        if (slot != NULL && slot->text != name)
            slot = NULL; /* refilled by another name since this record read it */
        int hidden;
        if (slot != NULL && slot->hidden_for == reserved) {
            hidden = slot->hidden;
        } else {
            hidden = PySet_Contains(reserved, name);
            if (hidden < 0)
                goto failed;
            if (!hidden)
                hidden = PyUnicode_FindChar(name, '.', 0, PyUnicode_GET_LENGTH(name), 1) >= 0;
            if (slot != NULL) {
                Py_XSETREF(slot->hidden_for, Py_NewRef(reserved));
                slot->hidden = hidden;
            }
        }
        if (hidden) {
            PyObject *key = PyUnicode_Concat(event_data_prefix, name);
            if (key == NULL || set(event, key, f->values[i]) < 0) {
                Py_XDECREF(key);
                goto failed;
            }
            Py_DECREF(key);
        } else if (set(event, name, f->values[i]) < 0) {
            goto failed;
        }
        PyObject *copy;
        if (slot != NULL && slot->copies_for == copies) {
            copy = slot->copy; /* profiles, their copies included, do not change once made */
        } else {
            copy = PyDict_GetItemWithError(copies, name);
            if (copy == NULL && PyErr_Occurred())
                goto failed;
            if (slot != NULL) {
                Py_XSETREF(slot->copies_for, Py_NewRef(copies));
                Py_XSETREF(slot->copy, Py_XNewRef(copy));
            }
        }
        if (copy != NULL) {
            copied[copy_count] = i;
            copy_keys[copy_count++] = copy;
        }
    }
    for (Py_ssize_t i = 0; i < copy_count; i++)
        if (set_copy(event, copy_keys[i], f->values[copied[i]], numbers) < 0)
            goto failed;
    if (add_names(event, names) < 0)
        goto failed;
    if (hash_keys != Py_None && add_hashes(event, hash_field, hash_keys) < 0)
        goto failed;
    if (set(event, key_log_file_path, path) < 0)
        goto failed;
    if (s->created != NULL && s->created != Py_None && set(event, key_timestamp, s->created) < 0)
        goto failed;
    if (s->provider != NULL && s->provider != Py_None &&
        (set(event, key_provider_name, s->provider) < 0 ||
         set(event, key_event_provider, s->provider) < 0 ||
         set(event, key_winlog_provider_name, s->provider) < 0))
        goto failed;
    if (s->computer != NULL && s->computer != Py_None &&
        (set(event, key_computer, s->computer) < 0 || set(event, key_host_name, s->computer) < 0))
        goto failed;
    if (s->record_id != NULL && s->record_id != Py_None &&
        set(event, key_record_id, s->record_id) < 0)
        goto failed;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(scalars); i++) {
        PyObject *pair = PyTuple_GET_ITEM(scalars, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "profile scalars must be (key, value) pairs");
            goto failed;
        }
        if (set(event, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0)
            goto failed;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists); i++) {
        PyObject *pair = PyTuple_GET_ITEM(lists, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "profile lists must be (key, items) pairs");
            goto failed;
        }
        PyObject *items = PySequence_List(PyTuple_GET_ITEM(pair, 1));
        if (items == NULL || set(event, PyTuple_GET_ITEM(pair, 0), items) < 0) {
            Py_XDECREF(items);
            goto failed;
        }
        Py_DECREF(items);
    }
    if (finish != Py_None) {
        PyObject *done = PyObject_CallOneArg(finish, event);
        if (done == NULL)
            goto failed;
        Py_DECREF(done);
    }
    return event;
failed:
    Py_DECREF(event);
    return NULL;
}

/* Whether a profile has the types build_event reads without checking again. */
static int profile_shaped(PyObject *profile)
{
    if (!PyTuple_Check(profile) || PyTuple_GET_SIZE(profile) != 8 ||
        !PyDict_Check(PyTuple_GET_ITEM(profile, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(profile, 1)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(profile, 2)) || !PyAnySet_Check(PyTuple_GET_ITEM(profile, 4)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(profile, 5)))
        return 0;
    PyObject *names = PyTuple_GET_ITEM(profile, 5);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *pair = PyTuple_GET_ITEM(names, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0)) || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1)))
            return 0;
    }
    PyObject *hash_keys = PyTuple_GET_ITEM(profile, 7);
    return hash_keys == Py_None ||
           (PyDict_Check(hash_keys) && PyUnicode_Check(PyTuple_GET_ITEM(profile, 6)));
}

static PyObject *find_profile(System *s, PyObject *profiles, PyObject *profile_for)
{
    PyObject *channel = s->channel != NULL ? s->channel : Py_None;
    PyObject *event_id = s->event_id != NULL ? s->event_id : Py_None;
    PyObject *key = PyTuple_Pack(2, channel, event_id);
    if (key == NULL)
        return NULL;
    PyObject *profile = PyDict_GetItemWithError(profiles, key);
    Py_DECREF(key);
    if (profile != NULL) {
        Py_INCREF(profile);
    } else if (!PyErr_Occurred()) {
        profile = PyObject_CallFunctionObjArgs(profile_for, channel, event_id, NULL);
    }
    if (profile != NULL && !profile_shaped(profile)) {
        PyErr_SetString(PyExc_TypeError, "profile_for must return an 8-item windows.Profile");
        Py_CLEAR(profile);
    }
    return profile;
}

static PyObject *flatten(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "flatten(text, path, profiles, profile_for, reserved) takes 5 arguments");
        return NULL;
    }
    PyObject *text = args[0], *path = args[1], *profiles = args[2], *profile_for = args[3],
             *reserved = args[4];
    if (!PyUnicode_Check(text) || !PyDict_Check(profiles) || !PyAnySet_Check(reserved)) {
        PyErr_SetString(PyExc_TypeError, "flatten expects (str, str, dict, callable, frozenset)");
        return NULL;
    }
    /* A one-byte str (ASCII, or Latin-1 such as Sysmon's "Microsoft®") is read in place; its
     * UTF-8 copy would cost as much as reading the record. Wider texts are read as UTF-8. */
    Py_ssize_t size;
    const char *bytes;
    int latin1 = 0;
    if (PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND) {
        bytes = (const char *)PyUnicode_1BYTE_DATA(text);
        size = PyUnicode_GET_LENGTH(text);
        latin1 = !PyUnicode_IS_ASCII(text);
    } else if ((bytes = PyUnicode_AsUTF8AndSize(text, &size)) == NULL) {
        return NULL;
    }
    Cursor cursor = {bytes, bytes + size, 0, latin1};
    System system = {0};
    Fields fields;
    fields.count = 0;
    PyObject *event = NULL;
    if (read_document(&cursor, &system, &fields)) {
        if (system.created != NULL && system.created != Py_None && !ecs_shaped(system.created)) {
            cursor.unsupported = 1;
        } else {
            PyObject *profile = find_profile(&system, profiles, profile_for);
            if (profile != NULL) {
                event = build_event(&system, &fields, path, profile, reserved);
                Py_DECREF(profile);
            }
        }
    }
    fields_clear(&fields);
    system_clear(&system);
    if (event == NULL && !PyErr_Occurred())
        Py_RETURN_NONE; /* unsupported or malformed: the Python route decides */
    return event;
}

static PyMethodDef methods[] = {
    {"flatten", (PyCFunction)(void (*)(void))flatten, METH_FASTCALL,
     "flatten(text, path, profiles, profile_for, reserved) -> dict | None\n\n"
     "One evtx JSON record as Vigil's flat event, or None when the Python route must read it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_evtxflat", "EVTX JSON records to flat events, in one pass.", -1,
    methods, NULL, NULL, NULL, NULL,
};

static int intern_keys(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } keys[] = {
        {&empty_string, ""},
        {&comma, ","},
        {&equals, "="},
        {&event_data_prefix, "winlog.event_data."},
        {&key_log_file_path, "log.file.path"},
        {&key_timestamp, "@timestamp"},
        {&key_provider_name, "Provider_Name"},
        {&key_event_provider, "event.provider"},
        {&key_winlog_provider_name, "winlog.provider_name"},
        {&key_computer, "Computer"},
        {&key_host_name, "host.name"},
        {&key_record_id, "winlog.record_id"},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if ((*keys[i].slot = PyUnicode_InternFromString(keys[i].text)) == NULL)
            return -1;
    return 0;
}

PyMODINIT_FUNC PyInit__evtxflat(void)
{
    if (intern_keys() < 0)
        return NULL;
    return PyModule_Create(&module);
}
