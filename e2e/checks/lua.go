package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func readObject(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

// luaHealth runs an Argo CD resource health script: the object is the global `obj`, the script
// returns a table {status, message}. Prints "<file> <status> <message>".
func luaHealth(script string, paths []string) error {
	code, err := os.ReadFile(script)
	if err != nil {
		return err
	}
	for _, p := range paths {
		obj, err := readObject(p)
		if err != nil {
			return err
		}
		L := lua.NewState(lua.Options{SkipOpenLibs: false})
		L.SetGlobal("obj", toLua(L, obj))
		if err := L.DoString(string(code)); err != nil {
			L.Close()
			return fmt.Errorf("%s on %s: %w", script, p, err)
		}
		ret, ok := L.Get(-1).(*lua.LTable)
		if !ok {
			L.Close()
			return fmt.Errorf("%s on %s: the script must return a table", script, p)
		}
		fmt.Printf("%s\t%s\t%s\n", p, ret.RawGetString("status").String(), ret.RawGetString("message").String())
		L.Close()
	}
	return nil
}

func toLua(L *lua.LState, v interface{}) lua.LValue {
	switch t := v.(type) {
	case map[string]interface{}:
		tbl := L.NewTable()
		for k, val := range t {
			tbl.RawSetString(k, toLua(L, val))
		}
		return tbl
	case []interface{}:
		tbl := L.NewTable()
		for _, val := range t {
			tbl.Append(toLua(L, val))
		}
		return tbl
	case string:
		return lua.LString(t)
	case float64:
		return lua.LNumber(t)
	case bool:
		return lua.LBool(t)
	default:
		return lua.LNil
	}
}
