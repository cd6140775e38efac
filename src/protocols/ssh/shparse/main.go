// Command shparse exposes mvdan/sh's parser to agate as a JavaScript
// function (GOOS=js GOARCH=wasm): agateShParse(text) returns the syntax tree
// as typed JSON (mvdan.cc/sh/v3/syntax/typedjson: every node carries its
// "Type"), or {"error": "..."} when the text does not parse as bash.
// Build: bash scripts/build-shparse.sh (writes wasm/shparse.wasm).
package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"syscall/js"

	"mvdan.cc/sh/v3/syntax"
	"mvdan.cc/sh/v3/syntax/typedjson"
)

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
	if err := (typedjson.EncodeOptions{}).Encode(&out, file); err != nil {
		msg, _ := json.Marshal(map[string]string{"error": err.Error()})
		return string(msg)
	}
	return out.String()
}

func main() {
	js.Global().Set("agateShParse", js.FuncOf(parse))
	select {}
}
