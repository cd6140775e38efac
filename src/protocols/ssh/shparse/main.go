// Command shparse exposes mvdan/sh's bash parser to agate as a JavaScript
// function (GOOS=js GOARCH=wasm): agateShParse(text) returns the syntax tree
// as JSON in the shape of mvdan.cc/sh/v3/syntax/typedjson, written directly
// (typedjson builds a reflect.StructOf per node, about ten times slower),
// with three differences: every node carries its "Type" (typedjson names only
// those reached through an interface), a position is {"Offset": n}, and
// position fields other than Pos and End are left out. Zero values are
// omitted, as typedjson does. On a parse error: {"error": "..."}.
// Build: bash scripts/build-shparse.sh.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"syscall/js"

	"mvdan.cc/sh/v3/syntax"
)

var posType = reflect.TypeFor[syntax.Pos]()

func parse(this js.Value, args []js.Value) any {
	if len(args) != 1 || args[0].Type() != js.TypeString {
		return `{"error":"agateShParse takes one string"}`
	}
	parser := syntax.NewParser(syntax.Variant(syntax.LangBash), syntax.KeepComments(false))
	file, err := parser.Parse(strings.NewReader(args[0].String()), "")
	if err != nil {
		msg, _ := json.Marshal(map[string]string{"error": err.Error()})
		return string(msg)
	}
	var out bytes.Buffer
	encode(&out, reflect.ValueOf(file))
	return out.String()
}

// isZero: what typedjson omits.
func isZero(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		return v.IsNil()
	case reflect.Slice:
		return v.Len() == 0
	case reflect.Bool:
		return !v.Bool()
	case reflect.String:
		return v.String() == ""
	case reflect.Uint8, reflect.Uint32:
		return v.Uint() == 0
	case reflect.Struct:
		return v.Type() == posType && !v.Interface().(syntax.Pos).IsValid()
	}
	return false
}

func writeString(out *bytes.Buffer, s string) {
	b, _ := json.Marshal(s)
	out.Write(b)
}

func writePos(out *bytes.Buffer, name string, p syntax.Pos) {
	if !p.IsValid() {
		return
	}
	out.WriteString(`,"` + name + `":{"Offset":` + strconv.FormatUint(uint64(p.Offset()), 10) + `}`)
}

func encode(out *bytes.Buffer, v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		encode(out, v.Elem())
	case reflect.Struct:
		out.WriteString(`{"Type":`)
		writeString(out, v.Type().Name())
		if node, ok := v.Addr().Interface().(syntax.Node); ok {
			writePos(out, "Pos", node.Pos())
			writePos(out, "End", node.End())
		}
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() || f.Type == posType {
				continue
			}
			fv := v.Field(i)
			if isZero(fv) {
				continue
			}
			out.WriteString(`,"` + f.Name + `":`)
			encode(out, fv)
		}
		out.WriteByte('}')
	case reflect.Slice:
		out.WriteByte('[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				out.WriteByte(',')
			}
			encode(out, v.Index(i))
		}
		out.WriteByte(']')
	case reflect.Bool:
		out.WriteString(strconv.FormatBool(v.Bool()))
	case reflect.String:
		writeString(out, v.String())
	case reflect.Uint8, reflect.Uint32:
		// Operators as their syntax ("|", "&&", ">>"), as typedjson writes them.
		if s, ok := v.Interface().(fmt.Stringer); ok {
			writeString(out, s.String())
		} else {
			out.WriteString(strconv.FormatUint(v.Uint(), 10))
		}
	default:
		out.WriteString("null")
	}
}

func main() {
	js.Global().Set("agateShParse", js.FuncOf(parse))
	select {}
}
